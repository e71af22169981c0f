"""Hand the synthetic hospital to the outside world: NDJSON files (one per resource type, as a
Bulk Data export would), or a FHIR server loaded with transaction bundles."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

import httpx
import orjson

from .hospital import Hospital, PatientRecord

# Referenced resources first, so a server that checks references accepts every bundle.
LOAD_ORDER = ("ResearchStudy", "Patient", "Condition", "MedicationStatement", "Procedure", "Observation",
              "AdverseEvent", "ResearchSubject")


def write_ndjson(hospital: Hospital, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for rtype, resources in hospital.by_type().items():
        path = directory / f"{rtype}.ndjson"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
        paths[rtype] = path
    return paths


def write_ndjson_stream(patients: Iterable[PatientRecord], directory: Path, truth_path: Path) -> dict[str, int]:
    """Write a streamed hospital (``stream_hospital``) as it comes: one NDJSON file per type, appended patient by
    patient, and the truth as NDJSON (one row per patient; rows differ in their keys, so no CSV header up front).
    Memory stays that of one patient whatever the hospital's size. Returns resources written per type."""
    directory.mkdir(parents=True, exist_ok=True)
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    counts: dict[str, int] = {}
    try:
        with truth_path.open("wb") as truth:
            for patient in patients:
                for r in patient.resources:
                    rtype = r["resourceType"]
                    if rtype not in files:
                        files[rtype] = (directory / f"{rtype}.ndjson").open("wb")
                        counts[rtype] = 0
                    files[rtype].write(orjson.dumps(r) + b"\n")
                    counts[rtype] += 1
                if patient.truth is not None:
                    truth.write(orjson.dumps(patient.truth) + b"\n")
    finally:
        for f in files.values():
            f.close()
    return counts


def write_truth(hospital: Hospital, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = sorted({k for row in hospital.truth for k in row})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(hospital.truth)


def _ordered(resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rank = {t: i for i, t in enumerate(LOAD_ORDER)}
    return sorted(resources, key=lambda r: rank.get(r["resourceType"], len(rank)))


def load_server(base_url: str, resources: Iterable[dict[str, Any]], batch_size: int = 500,
                timeout_s: float = 300.0) -> int:
    """PUT every resource (client-assigned ids: re-loading is idempotent) in transaction bundles."""
    items = _ordered(resources)
    with httpx.Client(timeout=timeout_s, headers={"Content-Type": "application/fhir+json",
                                                  "Prefer": "return=minimal"}) as http:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in chunk]}
            response = http.post(base_url.rstrip("/"), content=orjson.dumps(bundle))
            if response.status_code >= 400:
                raise RuntimeError(f"loading the FHIR server failed at resource {start}: HTTP {response.status_code} "
                                   f"{response.text[:500]}")
    return len(items)
