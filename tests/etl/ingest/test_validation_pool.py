"""The validation workers share the compiled schema their parent loaded before forking them."""
from __future__ import annotations

import etl.fhir.schema.runtime as runtime
from etl.ingest.pipeline import validation_pool


def _validator_address() -> tuple[int, bool]:
    """In a worker: where its validator is, and whether it was there before the worker ran anything."""
    return id(runtime._compiled[0]) if runtime._compiled else 0, runtime._compiled is not None


def test_workers_inherit_the_compiled_schema_instead_of_building_their_own(monkeypatch):
    monkeypatch.setattr(runtime, "_compiled", None)  # as in a fresh process that has validated nothing yet
    pool = validation_pool(2)
    assert pool is not None and runtime._compiled is not None
    try:
        address, inherited = pool.submit(_validator_address).result()
    finally:
        pool.shutdown()
    assert inherited and address == id(runtime._compiled[0])
