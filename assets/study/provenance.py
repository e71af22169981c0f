"""Provenance: which run, code, concept map, contract parameters and data watermarks produced
each study table, in a ``provenance`` table analysts can join (``current_provenance`` is the
latest row per table). Published numbers must be traceable to their inputs."""
from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterable

import pandas as pd
import sqlalchemy as sa

from etl.fhir.types import RESOURCE_TYPES
from etl.warehouse import Warehouse

from ..resources import PROJECT_ROOT, StudyResource

PROVENANCE = "provenance"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """GIT_COMMIT from the deployment, else the checkout's HEAD, else 'unknown' (an installed wheel)."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        # git from PATH with fixed arguments: the commit is provenance, not input
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)  # noqa: S603,S607
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def package_version() -> str:
    try:
        return version("iimild-pipeline")
    except PackageNotFoundError:
        return "unknown"


def watermarks(wh: Warehouse) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not wh.has_table("sync_state"):
        return out
    for rtype in RESOURCE_TYPES:
        state = wh.sync_state(rtype)
        if state:
            out[rtype] = {"watermark": state["watermark"], "checked_at": str(state["checked_at"]), "mode": state["mode"]}
    return out


def record_provenance(wh: Warehouse, run_id: str, study: StudyResource, tables: Iterable[str],
                      parameters: dict[str, Any]) -> pd.DataFrame:
    """Append one row per table for this run (re-running the same run id replaces its rows)."""
    names = list(tables)
    settings = {"window_start": study.window_start, "window_end": study.window_end,
                "data_cutoff": study.data_cutoff or "extraction time", "bootstrap_replicates": study.bootstrap_replicates,
                "seed": study.seed, **parameters}
    frame = pd.DataFrame({
        "table_name": names, "run_id": run_id, "computed_at": datetime.now(timezone.utc),
        "package_version": package_version(), "git_commit": git_commit(),
        "concept_map_sha256": study.concepts().digest,
        "parameters": json.dumps(settings, sort_keys=True, default=str),
        "data_watermarks": json.dumps(watermarks(wh), sort_keys=True)})
    if wh.has_table(PROVENANCE):
        table = sa.Table(PROVENANCE, sa.MetaData(), autoload_with=wh.engine)
        with wh.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.run_id == run_id, table.c.table_name.in_(names)))
            frame.to_sql(PROVENANCE, conn, if_exists="append", index=False)
    else:
        wh.replace_table(PROVENANCE, frame)
    return frame
