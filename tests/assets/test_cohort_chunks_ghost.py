"""A "ghost" candidate: a patient the Patient table lacks but an IIM Condition names. The index makes it a candidate
(``index_hospital``), so the chunked path must read its resources as a candidate's (``derive_in_chunks`` appends
the candidates absent from the Patient table), or its data-quality issues would be lost there and not in the
whole-hospital path."""
from __future__ import annotations

from datetime import date

from analytics.cohort.concepts import load_concept_map
from assets.study.cohort_source import index_hospital
from etl.warehouse import Warehouse
from synthetic import fhir_builders as fb
from synthetic.fhir_builders import ICD10, LOINC, RXNORM
from tests.assets.test_cohort_chunks import assert_same_tables, load, quality_of


def test_a_ghost_candidate_has_the_same_data_quality_in_chunks_as_in_one_pass(tmp_path):
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    when = date(2016, 3, 1)
    load(wh, [fb.patient("iim", "female", "1960-01-01"), fb.condition("c1", "iim", ICD10, "M33.10", when),
              fb.condition("c-ghost", "ghost", ICD10, "M33.10", when),
              fb.medication_statement("ms-ghost", "ghost", RXNORM, "8640", when, None, dose=None),
              fb.observation("obs-ghost", "ghost", LOINC, "2276-4", when, valueQuantity=fb.quantity(5, "furlong"))])
    assert index_hospital(wh, load_concept_map(), None).candidates == {"iim", "ghost"}
    for chunk in (1, 7):
        assert quality_of(assert_same_tables(wh, None, chunk=chunk)) == {
            ("retrospective", "glucocorticoid_dose_not_computable"): 1,
            ("retrospective", "observation_unit_not_convertible"): 1,
            ("retrospective", "reference_to_absent_patient"): 1}
