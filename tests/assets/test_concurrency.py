"""Two ingestions on one warehouse (issue 13): the second waits for the first's lock, and when the wait is
over it stops with a clear message instead of failing on duplicate keys."""
from __future__ import annotations

import threading

import dagster as dg
import pytest

from analytics.cohort.concepts import ConceptMapError, load_concept_map
from assets.fhir.ingest import fhir_ingest
from assets.resources import FhirServerResource, StudyResource, WarehouseResource
from etl.warehouse import Warehouse, WarehouseBusy
from synthetic.load import write_ndjson

KEY = "test-pseudonym-key-0123456789"


def test_the_ingestion_lock_is_exclusive_and_released(any_warehouse):
    url = any_warehouse.url
    with Warehouse(url).exclusive("ingest"):
        with pytest.raises(WarehouseBusy, match="another ingest run holds the warehouse lock"):
            with Warehouse(url).exclusive("ingest", wait_s=0.3, poll_s=0.05):
                pass
    with Warehouse(url).exclusive("ingest", wait_s=0.3):
        pass


def test_a_second_ingestion_waits_for_the_first(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    held, order = threading.Event(), []

    def first() -> None:
        with Warehouse(url).exclusive("ingest"):
            held.set()
            threading.Event().wait(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with Warehouse(url).exclusive("ingest", wait_s=10, poll_s=0.05):
        order.append("second in")
    thread.join(5)
    assert order == ["first done", "second in"]


def test_an_ingestion_run_that_cannot_get_the_lock_fails_with_a_clear_message(tmp_path, small_hospital):
    directory = tmp_path / "ndjson"
    write_ndjson(small_hospital, directory)
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    with Warehouse(url).exclusive("ingest"):
        result = dg.materialize([fhir_ingest], raise_on_error=False,
                                resources={"fhir": FhirServerResource(sync_mode="ndjson", ndjson_dir=str(directory)),
                                           "warehouse": WarehouseResource(url=url), "study": StudyResource(pseudonym_key=KEY)},
                                run_config={"ops": {"fhir_ingest": {"config": {"lock_wait_s": 0.5}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "another ingest run holds the warehouse lock" in str(failure.event_specific_data.error)


def test_a_yaml_alias_bomb_in_the_concept_map_is_refused_at_once(tmp_path):
    bomb = tmp_path / "map.yaml"
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    lines += [f'{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},'
              f'*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]' for i in range(8)]
    bomb.write_text("\n".join(lines) + "\nconditions: {ild: [{system: LOCAL, code: x}]}\n")
    with pytest.raises(ConceptMapError, match="anchors and aliases are not allowed"):
        load_concept_map(str(bomb))
