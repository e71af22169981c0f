"""Reading raw resources by id (etl/warehouse/by_patient.py), as the cohort step's chunks do."""
from __future__ import annotations

from etl.fhir.types import RESOURCE_TYPES
from etl.warehouse import RawRow


def observation(i: int) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final", "subject": {"reference": f"Patient/p{i % 7}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]}, "valueQuantity": {"value": i, "unit": "ng/mL"}}


def test_every_stored_id_asked_for_comes_back_parsed_and_an_absent_one_is_left_out(any_warehouse):
    """More ids than one IN list held (500) or SQLite once allowed as parameters (999), in one call."""
    any_warehouse.ensure_schema(RESOURCE_TYPES)
    any_warehouse.apply("Observation", [RawRow.of(observation(i), "test") for i in range(1200)])
    asked = [f"obs-{i}" for i in range(1199, -1, -2)] + ["obs-absent"]
    found = any_warehouse.raw_resources_by_id("Observation", asked)
    assert sorted(found) == sorted(asked[:-1])
    assert found["obs-1199"] == observation(1199)
    assert any_warehouse.raw_resources_by_id("Observation", []) == {}


def test_ids_are_grouped_by_their_subject_reference_in_the_tables_id_order(any_warehouse):
    """One row per reference text (the database groups them), its ids in id order whatever the load order;
    a resource without a subject is grouped under None."""
    any_warehouse.ensure_schema(RESOURCE_TYPES)
    loaded = [observation(i) for i in (12, 3, 7, 10, 0, 5)] + [{**observation(99), "subject": None}]
    any_warehouse.apply("Observation", [RawRow.of(r, "test") for r in loaded])
    grouped = dict(any_warehouse.ids_by_value("Observation", ("subject", "reference")))
    assert grouped == {"Patient/p0": ["obs-0", "obs-7"], "Patient/p3": ["obs-10", "obs-3"], "Patient/p5": ["obs-12", "obs-5"],
                       None: ["obs-99"]}


def test_distinct_values_lists_each_combination_once(any_warehouse):
    any_warehouse.ensure_schema(RESOURCE_TYPES)
    any_warehouse.apply("Observation", [RawRow.of(observation(i), "test") for i in (0, 7, 14, 1)])
    found = any_warehouse.distinct_values("Observation", ("subject", "reference"), ("status",))
    assert sorted(found) == [("Patient/p0", "final"), ("Patient/p1", "final")]
