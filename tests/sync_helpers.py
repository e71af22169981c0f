"""Helpers for the ingestion tests: a fresh sandbox per test module, and a warehouse fingerprint."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from etl.fhir.types import RESOURCE_TYPES as TYPES
from etl.warehouse import Warehouse


def warehouse(tmp_path: Path, name: str = "w") -> Warehouse:
    return Warehouse(f"sqlite:///{tmp_path / (name + '.sqlite')}")


def snapshot(wh: Warehouse, types=TYPES) -> dict[str, pd.DataFrame]:
    """What analysts see: every current row's id, version and content, per type, plus quarantine."""
    out = {}
    for t in types:
        frame = wh.read_table(f"raw_{t.lower()}")[["id", "version_id", "content_hash"]]
        out[t] = frame.sort_values("id").reset_index(drop=True)
    with wh.engine.connect() as conn:
        q = pd.read_sql(sa.text("SELECT resource_type, fingerprint, current FROM quarantine ORDER BY 1, 2"), conn)
    out["quarantine"] = q
    return out


def assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key], obj=key)
