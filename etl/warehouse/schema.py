"""The warehouse's tables: names, the schema each lives in, and their columns.

On PostgreSQL, tables live in three schemas: study tables in ``public`` (granted to analysts), raw FHIR
data and ingestion bookkeeping in ``fhir``, and the two tables that tie rows to real patients (the
pseudonym cross-reference, quarantined raw resources) in ``restricted``. SQLite has one namespace.
"""
from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

QUARANTINE = "quarantine"
PATIENT_XREF = "patient_xref"
INGEST_SCHEMA, RESTRICTED_SCHEMA = "fhir", "restricted"
RESTRICTED_TABLES = {QUARANTINE, PATIENT_XREF}
HISTORY = "raw_history"
SYNC_STATE = "sync_state"
INGEST_COUNTS = "ingest_counts"
BULK_JOBS = "bulk_jobs"
SEEN_IDS = "sync_seen_ids"
INGEST_TABLES = (HISTORY, SYNC_STATE, INGEST_COUNTS, BULK_JOBS, SEEN_IDS)
# Typed child rows (every coding, component, dosage) were written beside the raw JSON until the
# restructuring and read by nothing: the cohort flattens the JSON itself (README, "Flatten once").
# They are dropped on sight so that no stale copy outlives its raw rows.
RETIRED_TABLES = ("fhir_coding", "fhir_observation_component", "fhir_dosage")
RAW_COLUMNS = ("id", "version_id", "last_updated", "content_hash", "resource", "source", "loaded_at")
HISTORY_COLUMNS = ("resource_type", "id", "version_key", "version_id", "last_updated", "deleted", "resource", "source",
                   "loaded_at")


def raw_table_name(resource_type: str) -> str:
    return f"raw_{resource_type.lower()}"


def schema_of(name: str, postgres: bool) -> str | None:
    """The schema a table lives in (None on SQLite)."""
    if not postgres:
        return None
    if name in RESTRICTED_TABLES:
        return RESTRICTED_SCHEMA
    if name.startswith("raw_") or name in INGEST_TABLES or name in RETIRED_TABLES:
        return INGEST_SCHEMA
    return None


class Tables:
    """The SQLAlchemy ``Table`` objects of one warehouse, defined once per engine."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        self.metadata = sa.MetaData()
        self._tables: dict[str, sa.Table] = {}
        self._lock = threading.Lock()
        self._define_shared()

    def __getitem__(self, name: str) -> sa.Table:
        return self._tables[name]

    def _define(self, name: str, *columns: Any, **options: Any) -> sa.Table:
        self._tables[name] = sa.Table(name, self.metadata, *columns, schema=schema_of(name, self.postgres), **options)
        return self._tables[name]

    def _define_shared(self) -> None:
        ts = sa.DateTime(timezone=True)
        self._define(HISTORY,
                     sa.Column("resource_type", sa.String(64), primary_key=True),
                     sa.Column("id", sa.String(64), primary_key=True),
                     sa.Column("version_key", sa.String(64), primary_key=True),
                     sa.Column("version_id", sa.String(64)), sa.Column("last_updated", sa.String(40)),
                     sa.Column("deleted", sa.Boolean, nullable=False), sa.Column("resource", sa.Text),
                     sa.Column("source", sa.Text, nullable=False), sa.Column("loaded_at", ts, nullable=False))
        self._define(QUARANTINE,
                     sa.Column("resource_type", sa.String(64), primary_key=True),
                     sa.Column("fingerprint", sa.String(64), primary_key=True),
                     sa.Column("resource_id", sa.String(256), index=True), sa.Column("version_id", sa.String(64)),
                     sa.Column("raw", sa.Text, nullable=False), sa.Column("errors", sa.Text, nullable=False),
                     sa.Column("source", sa.Text, nullable=False), sa.Column("first_seen", ts, nullable=False),
                     sa.Column("last_seen", ts, nullable=False), sa.Column("current", sa.Boolean, nullable=False))
        self._define(SYNC_STATE,
                     sa.Column("resource_type", sa.String(64), primary_key=True),
                     sa.Column("watermark", sa.String(40)), sa.Column("watermark_source", sa.String(32)),
                     sa.Column("mode", sa.String(32)), sa.Column("checked_at", ts, nullable=False),
                     sa.Column("last_full_sync", ts))
        self._define(INGEST_COUNTS,
                     sa.Column("resource_type", sa.String(64), primary_key=True),
                     sa.Column("scope", sa.Text, nullable=False), sa.Column("server_count", sa.Integer),
                     sa.Column("warehouse_count", sa.Integer, nullable=False),
                     sa.Column("quarantined_current", sa.Integer, nullable=False), sa.Column("checked_at", ts, nullable=False))
        self._define(BULK_JOBS,
                     sa.Column("status_url", sa.Text, primary_key=True), sa.Column("request", sa.Text, nullable=False),
                     sa.Column("state", sa.String(16), nullable=False), sa.Column("kicked_off_at", ts, nullable=False),
                     sa.Column("transaction_time", sa.String(40)), sa.Column("finished_at", ts))
        # WITHOUT ROWID on SQLite: the key is the whole row, so a rowid table kept it twice (table and index);
        # the spill of every id a full pass sees cost the loading process about 5 us per resource, 3 without.
        self._define(SEEN_IDS, sa.Column("resource_type", sa.String(64), primary_key=True),
                     sa.Column("id", sa.String(64), primary_key=True), sqlite_with_rowid=False)

    def raw(self, resource_type: str) -> sa.Table:
        name = raw_table_name(resource_type)
        with self._lock:  # one warehouse may serve several threads (the cohort-first chunk pool, a code server)
            return self._raw(name)

    def _raw(self, name: str) -> sa.Table:
        if name not in self._tables:
            # No index on last_updated: nothing queries by it, and keeping it up cost a sixth of a
            # load's write time at 1M resources (watermarks come from the server, not this column).
            self._define(name,
                         sa.Column("id", sa.String(64), primary_key=True),
                         sa.Column("version_id", sa.String(64)), sa.Column("last_updated", sa.String(40)),
                         sa.Column("content_hash", sa.String(64), nullable=False),
                         sa.Column("resource", sa.Text, nullable=False), sa.Column("source", sa.Text, nullable=False),
                         sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False))
        return self._tables[name]

    def shared(self) -> list[sa.Table]:
        return [self._tables[n] for n in (QUARANTINE, *INGEST_TABLES)]
