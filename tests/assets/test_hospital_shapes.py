"""Every asset materializes on hospitals whose shape the paper's centre never had: no prospective
enrolment at all (no ResearchSubject resource), found crashing the cohort step by the three-hospital
demo. Each study table is then present with its columns, and empty where there is nothing to say."""
from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from analytics.catalog import columns_of
from assets.definitions import all_assets
from assets.resources import FhirServerResource, StudyResource, WarehouseResource
from etl.warehouse import Warehouse
from synthetic.hospital import HospitalParams, generate_hospital
from synthetic.load import write_ndjson

pytestmark = pytest.mark.integration


def test_a_hospital_without_prospective_enrolment_materializes_every_asset(tmp_path):
    hospital = generate_hospital(HospitalParams(seed=11, n_retrospective=60, n_prospective_enrolled=0, n_noise=5))
    assert "ResearchSubject" not in hospital.by_type()
    write_ndjson(hospital, tmp_path / "ndjson")
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    result = dg.materialize(all_assets, resources={
        "fhir": FhirServerResource(sync_mode="ndjson", ndjson_dir=str(tmp_path / "ndjson")),
        "warehouse": WarehouseResource(url=url),
        "study": StudyResource(pseudonym_key="test-pseudonym-key-0123456789", data_cutoff="2026-01-01",
                               bootstrap_replicates=0),
    }, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    wh = Warehouse(url)
    prospective = wh.read_table("prospective_cohort")
    assert prospective.empty and list(prospective.columns) == columns_of("prospective_cohort")
    truth = pd.DataFrame(hospital.truth)
    expected = truth[truth["retro_reason"].isna()]
    cohort = wh.read_table("cohort")
    assert len(cohort) == len(expected) > 0
    assert cohort["group"].value_counts().to_dict() == expected["group"].value_counts().to_dict()
    effects = wh.read_table("effect_estimates")
    assert effects["hazard_ratio"].notna().any()
