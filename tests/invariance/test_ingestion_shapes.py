"""Invariance through ingestion: page size, file split, file and line order, and a second identical
version of a resource change nothing in the cohort tables (issue 12). The reference is the same
hospital run through the pure path (tests/invariance/pipeline.py)."""
from __future__ import annotations

import random

import orjson
import pytest

from etl.fhir.client import FhirClient
from etl.fhir.types import RESOURCE_TYPES
from etl.ingest.ndjson_dir import sync_ndjson_directory
from etl.ingest.rest import sync_rest
from synthetic.variants import BY_NAME
from tests.sync_helpers import warehouse

from .pipeline import cohort_tables, differences


@pytest.fixture(scope="module")
def baseline(small_hospital):
    return cohort_tables(small_hospital.resources)


def warehouse_tables(wh) -> dict:
    return cohort_tables([r for rtype in RESOURCE_TYPES for r in wh.raw_resources(rtype)])


def test_ndjson_split_shuffled_and_with_second_identical_versions(tmp_path, small_hospital, baseline):
    rng = random.Random(12)
    lines: dict[str, list[bytes]] = {}
    for r in small_hospital.resources:
        if rng.random() < 0.1:  # the same content twice: version 1, then version 2 (possibly in another file)
            for version in ("1", "2"):
                again = {**r, "meta": {**r.get("meta", {}), "versionId": version,
                                       "lastUpdated": f"2024-0{version}-01T00:00:00Z"}}
                lines.setdefault(r["resourceType"], []).append(orjson.dumps(again))
        else:
            lines.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    export = tmp_path / "export"
    export.mkdir()
    for rtype, rows in lines.items():
        rng.shuffle(rows)
        for part in range(3):
            (export / f"{rtype}.{part:03d}.ndjson").write_bytes(b"".join(line + b"\n" for line in rows[part::3]))
    wh = warehouse(tmp_path)
    reports = sync_ndjson_directory(wh, export, list(RESOURCE_TYPES), workers=1)
    assert sum(r.load.quarantined_seen for r in reports.values()) == 0
    assert differences(baseline, warehouse_tables(wh)) == {}


@pytest.mark.integration
def test_rest_pull_with_a_small_page_size(sandbox, tmp_path, baseline):
    wh = warehouse(tmp_path)
    with FhirClient(sandbox.base_url, page_size=13, backoff_s=0.01) as client:
        sync_rest(client, wh, list(RESOURCE_TYPES))
    assert differences(baseline, warehouse_tables(wh)) == {}


@pytest.mark.parametrize("name", ["absolute_references", "versioned_references", "uuid_ids", "long_ids"])
def test_reference_and_id_shapes_survive_ingestion(tmp_path, small_hospital, baseline, name):
    """Ingestion's own readers of references (plausibility, filters) accept every shape the cohort reads."""
    rewritten = BY_NAME[name].apply(small_hospital.resources, random.Random(name))
    export = tmp_path / "export"
    export.mkdir()
    by_type: dict[str, list[bytes]] = {}
    for r in rewritten.resources:
        by_type.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    for rtype, rows in by_type.items():
        (export / f"{rtype}.ndjson").write_bytes(b"".join(line + b"\n" for line in rows))
    wh = warehouse(tmp_path)
    reports = sync_ndjson_directory(wh, export, list(RESOURCE_TYPES), workers=1)
    assert sum(r.load.quarantined_seen for r in reports.values()) == 0
    got = cohort_tables([r for rtype in RESOURCE_TYPES for r in wh.raw_resources(rtype)], rewritten.patient_ids)
    assert differences(baseline, got) == {}
