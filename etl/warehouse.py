"""The SQL warehouse behind every table this service writes (SQLAlchemy 2; SQLite or PostgreSQL).

Raw FHIR data lives in three layers, all written in one transaction per batch:

* ``raw_<type>``: the current version of every resource (id, versionId, lastUpdated, JSON);
* ``raw_history``: every version and tombstone ever loaded, keyed by (type, id, version);
* typed child tables (``fhir_coding``, ``fhir_observation_component``, ``fhir_dosage``).

Loads are upserts keyed by (type, id): a version that is already stored is skipped, an older one
never overwrites a newer one, so replaying any batch (a crash and a re-run, a page served twice,
an overlapping ``_lastUpdated`` window) leaves the same tables. Invalid resources go to
``quarantine``, keyed by their content fingerprint, with the first and last time they were seen;
``current`` says whether that bad version is still the server's latest for its id.
"""
from __future__ import annotations

import fcntl
import hashlib
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .children import CHILD_TABLES, CODING, COMPONENT, DOSAGE, child_rows
from .children import COLUMNS as CHILD_COLUMNS

QUARANTINE = "quarantine"
PATIENT_XREF = "patient_xref"
# On PostgreSQL, tables live in three schemas: study tables in ``public`` (granted to analysts),
# raw FHIR data and ingestion bookkeeping in ``fhir``, and the two tables that tie rows to real
# patients (the pseudonym cross-reference, quarantined raw resources) in ``restricted``.
INGEST_SCHEMA, RESTRICTED_SCHEMA = "fhir", "restricted"
RESTRICTED_TABLES = {QUARANTINE, PATIENT_XREF}
HISTORY = "raw_history"
SYNC_STATE = "sync_state"
INGEST_COUNTS = "ingest_counts"
BULK_JOBS = "bulk_jobs"
SEEN_IDS = "sync_seen_ids"
_IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's variable limit


def raw_table_name(resource_type: str) -> str:
    return f"raw_{resource_type.lower()}"


def content_hash(resource: Any) -> str:
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class RawRow:
    """One valid resource. Validation workers may send it pre-serialised (``text``, ``digest``,
    ``children``) so that the loading process does not parse it again."""

    id: str
    version_id: str | None
    last_updated: str | None
    resource: dict[str, Any] | None
    source: str
    text: str | None = None
    digest: str | None = None
    children: dict[str, list[tuple[Any, ...]]] | None = None

    def __reduce__(self) -> tuple:  # a plain tuple crosses the process boundary ~5x cheaper than dataclass state
        return RawRow, (self.id, self.version_id, self.last_updated, self.resource, self.source, self.text,
                        self.digest, self.children)

    @staticmethod
    def of(resource: dict[str, Any], source: str) -> "RawRow":
        meta = resource.get("meta") or {}
        return RawRow(resource["id"], meta.get("versionId"), meta.get("lastUpdated"), resource, source)

    def json_text(self) -> str:
        return self.text if self.text is not None else orjson.dumps(self.resource).decode()

    def content_digest(self) -> str:
        return self.digest if self.digest is not None else content_hash(self.resource)

    def child_rows(self, resource_type: str) -> dict[str, list[tuple[Any, ...]]]:
        if self.children is not None:
            return self.children
        if self.resource is None:
            raise ValueError("a RawRow needs its children or its resource")
        return child_rows(resource_type, self.resource)


@dataclass(frozen=True)
class Tombstone:
    id: str
    version_id: str | None
    last_updated: str | None
    source: str


@dataclass(frozen=True)
class QuarantineRow:
    resource_type: str
    resource_id: str | None
    raw: str
    errors: list[str]
    source: str
    version_id: str | None = None
    may_supersede: bool = True  # False for a conflicting copy: the stored version stays current


@dataclass
class ApplyResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0       # older than the stored version: not applied
    deleted: int = 0
    quarantined: int = 0  # quarantine rows first seen in this batch
    conflicts: int = 0    # same id and version as another copy, different content: quarantined

    def add(self, other: "ApplyResult") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def writes(self) -> int:
        return self.inserted + self.updated + self.deleted + self.quarantined


def _version_number(version_id: str | None) -> int | None:
    try:
        return int(version_id) if version_id is not None else None
    except ValueError:
        return None


def is_newer(incoming: tuple[str | None, str | None], stored: tuple[str | None, str | None]) -> bool:
    """Whether (versionId, lastUpdated) ``incoming`` supersedes ``stored``.

    Numeric versionIds compare as numbers; otherwise lastUpdated decides; with neither, the later
    arrival wins (a server that sends no meta gives us nothing better)."""
    a, b = _version_number(incoming[0]), _version_number(stored[0])
    if a is not None and b is not None and a != b:
        return a > b
    if incoming[1] and stored[1] and incoming[1] != stored[1]:
        return incoming[1] > stored[1]
    return a is None or b is None or a == b


def _same_version(row: RawRow, version_id: str | None, last_updated: str | None) -> bool:
    return row.version_id is not None and row.version_id == version_id and row.last_updated == last_updated


def _conflict(resource_type: str, row: RawRow) -> QuarantineRow:
    return QuarantineRow(resource_type, row.id, row.json_text(),
                         [f"duplicate: id {row.id!r} version {row.version_id!r} arrived again with different content; "
                          "the first copy is kept"], row.source, row.version_id, may_supersede=False)


def _supersedes(q: QuarantineRow, stored: "_Stored") -> bool:
    """An invalid version replaces the stored valid one only when it is strictly newer (or unversioned)."""
    if not q.may_supersede:
        return False
    a, b = _version_number(q.version_id), _version_number(stored.version_id)
    return a is None or b is None or a > b


def _version_key(version_id: str | None, last_updated: str | None, digest: str) -> str:
    return version_id or last_updated or digest[:32]


@dataclass
class _Stored:
    version_id: str | None
    last_updated: str | None
    digest: str


def _sqlite_write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (the Dagster UI, analysts) read while a load writes; with synchronous=NORMAL a
    commit does not wait for a disk sync. A crash can lose only the last commits, never consistency,
    and WAL keeps commit order, so a watermark saved after its data never outlives it. 16 KB pages
    and a 64 MB cache cut the loading process's write time by about a fifth in the ingestion
    benchmark (a new file only: an existing file keeps its page size)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA page_size=16384")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MB of pages: the indexes of a million-row load stay in memory
    cursor.close()


class WarehouseBusy(RuntimeError):
    """Another run holds the warehouse's ingestion lock."""


class WarehouseWriteError(RuntimeError):
    """A batch could not be written; the message names the table and the error, never the rows."""


class Warehouse:
    def __init__(self, url: str) -> None:
        self.url = url
        # hide_parameters: a failed statement's message (an IntegrityError, say) must not carry the rows it
        # wrote into Dagster's logs, since those rows are patient resources.
        self.engine = sa.create_engine(url, future=True, hide_parameters=True)
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            sa.event.listen(self.engine, "connect", _sqlite_write_ahead_log)
        self.postgres = self.engine.dialect.name == "postgresql"
        self.metadata = sa.MetaData()
        self._tables: dict[str, sa.Table] = {}
        self._define_shared_tables()

    @contextmanager
    def exclusive(self, purpose: str = "ingest", wait_s: float = 600.0, poll_s: float = 0.5) -> Iterator[None]:
        """One writer of raw tables at a time: a second ingestion waits up to ``wait_s`` for the first, then
        fails with a clear message (two at once broke each other's unique keys). PostgreSQL: a session advisory
        lock; SQLite: an exclusive lock on a file beside the database."""
        deadline = time.monotonic() + wait_s
        if self.postgres:
            key = int.from_bytes(hashlib.sha256(f"iimild:{purpose}".encode()).digest()[:8], "big", signed=True)
            with self.engine.connect() as conn:
                while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                    if time.monotonic() > deadline:
                        raise WarehouseBusy(f"another {purpose} run holds the warehouse lock; waited {wait_s:.0f}s")
                    time.sleep(poll_s)
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            return
        database = self.engine.url.database
        path = Path(f"{database}.{purpose}.lock") if database not in (None, "", ":memory:") else None
        if path is None:
            yield
            return
        with path.open("a+") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise WarehouseBusy(f"another {purpose} run holds the warehouse lock ({path.name}); "
                                            f"waited {wait_s:.0f}s") from None
                    time.sleep(poll_s)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def schema_of(self, name: str) -> str | None:
        """The schema a table lives in (None on SQLite, which has one namespace)."""
        if not self.postgres:
            return None
        if name in RESTRICTED_TABLES:
            return RESTRICTED_SCHEMA
        if name.startswith("raw_") or name in (SYNC_STATE, INGEST_COUNTS, BULK_JOBS, SEEN_IDS, *CHILD_TABLES):
            return INGEST_SCHEMA
        return None

    def qualified(self, name: str) -> str:
        schema = self.schema_of(name)
        return f'"{schema}"."{name}"' if schema else f'"{name}"'

    def _define(self, name: str, *columns: Any) -> sa.Table:
        self._tables[name] = sa.Table(name, self.metadata, *columns, schema=self.schema_of(name))
        return self._tables[name]

    # ------------------------------------------------------------------ schema

    def _define_shared_tables(self) -> None:
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
        self._define(SEEN_IDS, sa.Column("resource_type", sa.String(64), primary_key=True),
                     sa.Column("id", sa.String(64), primary_key=True))
        self._define(CODING,
                 sa.Column("resource_type", sa.String(64), nullable=False), sa.Column("resource_id", sa.String(64), nullable=False),
                 sa.Column("path", sa.String(200), nullable=False), sa.Column("system", sa.Text), sa.Column("code", sa.String(200)),
                 sa.Column("display", sa.Text),
                 sa.Index("ix_fhir_coding_resource", "resource_type", "resource_id"), sa.Index("ix_fhir_coding_code", "code"))
        self._define(COMPONENT,
                 sa.Column("observation_id", sa.String(64), primary_key=True), sa.Column("position", sa.Integer, primary_key=True),
                 sa.Column("system", sa.Text), sa.Column("code", sa.String(200)), sa.Column("value", sa.Float),
                 sa.Column("unit", sa.String(64)), sa.Column("value_string", sa.Text))
        self._define(DOSAGE,
                 sa.Column("statement_id", sa.String(64), primary_key=True), sa.Column("position", sa.Integer, primary_key=True),
                 sa.Column("dose_value", sa.Float), sa.Column("dose_unit", sa.String(64)), sa.Column("frequency", sa.Integer),
                 sa.Column("period", sa.Float), sa.Column("period_unit", sa.String(16)), sa.Column("text", sa.Text))

    def table(self, name: str) -> sa.Table:
        return self._tables[name]

    def _raw_table(self, resource_type: str) -> sa.Table:
        name = raw_table_name(resource_type)
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

    def ensure_schema(self, resource_types: Iterable[str] = ()) -> None:
        tables = [self._raw_table(t) for t in resource_types]
        if self.postgres:
            with self.engine.begin() as conn:
                for schema in (INGEST_SCHEMA, RESTRICTED_SCHEMA):
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        self.metadata.create_all(self.engine, tables=[*self._shared_tables(), *tables])

    def _shared_tables(self) -> list[sa.Table]:
        return [self._tables[n] for n in (HISTORY, QUARANTINE, SYNC_STATE, INGEST_COUNTS, BULK_JOBS, SEEN_IDS, *CHILD_TABLES)]

    # ------------------------------------------------------------------ loading

    def _stored(self, conn: sa.Connection, raw: sa.Table, ids: Sequence[str]) -> dict[str, _Stored]:
        out: dict[str, _Stored] = {}
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i:i + _IN_CHUNK]
            query = sa.select(raw.c.id, raw.c.version_id, raw.c.last_updated, raw.c.content_hash).where(self._among(raw.c.id, chunk))
            for rid, vid, lu, digest in conn.execute(query):
                out[rid] = _Stored(vid, lu, digest)
        return out

    def _delete_current(self, conn: sa.Connection, resource_type: str, raw: sa.Table, ids: Sequence[str]) -> None:
        coding, component, dosage = (self._tables[n] for n in CHILD_TABLES)
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i:i + _IN_CHUNK]
            conn.execute(raw.delete().where(self._among(raw.c.id, chunk)))
            conn.execute(coding.delete().where(coding.c.resource_type == resource_type, self._among(coding.c.resource_id, chunk)))
            if resource_type == "Observation":
                conn.execute(component.delete().where(self._among(component.c.observation_id, chunk)))
            if resource_type == "MedicationStatement":
                conn.execute(dosage.delete().where(self._among(dosage.c.statement_id, chunk)))

    def apply(self, resource_type: str, rows: Sequence[RawRow] = (), tombstones: Sequence[Tombstone] = (),
              quarantined: Sequence[QuarantineRow] = ()) -> ApplyResult:
        """Upsert one batch of valid resources, deletes and quarantine rows in a single transaction.

        Within a batch, the newest version of each id wins. Nothing is written for a resource
        whose version is already stored, so an unchanged re-run writes no rows at all. A database error
        is re-raised without its details: PostgreSQL's ``DETAIL`` quotes the offending key (a FHIR id)."""
        try:
            return self._apply(resource_type, rows, tombstones, quarantined)
        except Exception as exc:  # every driver's error, re-raised without the rows it quotes
            orig = getattr(exc, "orig", exc)
            if not isinstance(exc, sa.exc.DBAPIError) and type(orig).__module__.split(".")[0] not in ("psycopg", "sqlite3"):
                raise
            first_line = str(orig).splitlines()[0] if str(orig) else ""
            first_line = re.sub(r"\(.*?\)=\(.*?\)", "(…)=(…)", first_line)
            raise WarehouseWriteError(f"{type(orig).__name__} writing a batch of {resource_type}: {first_line}") from None

    def _apply(self, resource_type: str, rows: Sequence[RawRow], tombstones: Sequence[Tombstone],
               quarantined: Sequence[QuarantineRow]) -> ApplyResult:
        result = ApplyResult()
        raw, history, quarantine = self._raw_table(resource_type), self._tables[HISTORY], self._tables[QUARANTINE]
        latest: dict[str, RawRow] = {}
        quarantined = list(quarantined)
        for row in rows:
            prev = latest.get(row.id)
            if prev is not None and _same_version(row, prev.version_id, prev.last_updated) \
                    and row.content_digest() != prev.content_digest():
                quarantined.append(_conflict(resource_type, row))
                result.conflicts += 1
                continue
            if prev is None or is_newer((row.version_id, row.last_updated), (prev.version_id, prev.last_updated)):
                latest[row.id] = row
        deletes = {t.id: t for t in tombstones}
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            ids = sorted({*latest, *deletes, *(q.resource_id for q in quarantined if q.resource_id)})
            stored = self._stored(conn, raw, ids)
            changed: list[tuple[RawRow, str]] = []
            for rid, row in latest.items():
                digest = row.content_digest()
                old = stored.get(rid)
                if old is not None and old.digest != digest and _same_version(row, old.version_id, old.last_updated):
                    quarantined.append(_conflict(resource_type, row))
                    result.conflicts += 1
                    continue
                if old is not None and (old.digest == digest or not is_newer((row.version_id, row.last_updated),
                                                                             (old.version_id, old.last_updated))):
                    if old.digest == digest:
                        result.unchanged += 1
                    else:
                        result.stale += 1
                    continue
                if rid in deletes and not is_newer((row.version_id, row.last_updated),
                                                   (deletes[rid].version_id, deletes[rid].last_updated)):
                    continue  # deleted after this version: the tombstone below wins
                changed.append((row, digest))
                result.updated += old is not None
                result.inserted += old is None
            removals: list[Tombstone] = []
            for rid, tomb in deletes.items():
                old = stored.get(rid)
                if old is None or (tomb.version_id is not None and not is_newer(
                        (tomb.version_id, tomb.last_updated), (old.version_id, old.last_updated))):
                    continue
                removals.append(tomb)
            result.deleted = len(removals)
            superseded: list[str] = []  # quarantined versions newer than the stored valid one
            for q in quarantined:
                old = stored.get(q.resource_id) if q.resource_id else None
                if old is not None and _supersedes(q, old):
                    superseded.append(q.resource_id)  # type: ignore[arg-type]
            # Only ids already stored have rows to remove: a first load deletes nothing.
            gone = sorted({*(r.id for r, _ in changed if r.id in stored), *(t.id for t in removals), *superseded})
            if gone:
                self._delete_current(conn, resource_type, raw, gone)
            stamp = self._driver_time(now)
            if changed:
                texts = [r.json_text() for r, _ in changed]
                self._insert_rows(conn, raw, ("id", "version_id", "last_updated", "content_hash", "resource", "source", "loaded_at"),
                                  [(r.id, r.version_id, r.last_updated, d, t, r.source, stamp)
                                   for (r, d), t in zip(changed, texts, strict=True)])
                self._insert_children(conn, resource_type, [r for r, _ in changed])
                history_rows = [(resource_type, r.id, _version_key(r.version_id, r.last_updated, d), r.version_id,
                                 r.last_updated, False, t, r.source, stamp) for (r, d), t in zip(changed, texts, strict=True)]
            else:
                history_rows = []
            history_rows += [(resource_type, t.id, _version_key(t.version_id, t.last_updated, "deleted:" + now.isoformat()),
                              t.version_id, t.last_updated, True, None, t.source, stamp) for t in removals]
            if history_rows:
                # A version seen before (a replayed page) is already in the history: insert-or-ignore.
                self._insert_rows(conn, history, ("resource_type", "id", "version_key", "version_id", "last_updated",
                                                  "deleted", "resource", "source", "loaded_at"), history_rows, ignore_conflicts=True)
            valid_ids = [r.id for r, _ in changed] + list(deletes)  # a delete also ends a quarantined version
            if valid_ids and conn.execute(sa.select(quarantine.c.fingerprint).where(
                    quarantine.c.resource_type == resource_type, quarantine.c.current.is_(True)).limit(1)).first():
                for i in range(0, len(valid_ids), _IN_CHUNK):
                    conn.execute(quarantine.update().where(quarantine.c.resource_type == resource_type,
                                                           self._among(quarantine.c.resource_id, valid_ids[i:i + _IN_CHUNK]),
                                                           quarantine.c.current.is_(True)).values(current=False))
            result.quarantined = self._quarantine(conn, quarantined, stored, now)
        return result

    def _driver_time(self, moment: datetime) -> Any:
        """A timestamp as the driver should receive it: SQLAlchemy's own SQLite text format (naive UTC)."""
        if self.engine.dialect.name == "sqlite":
            return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        return moment

    def _among(self, column: sa.ColumnElement[Any], values: Sequence[str]) -> sa.ColumnElement[bool]:
        """``column IN (values)``. On PostgreSQL ``= ANY(<one array parameter>)``: the statement text
        stays the same for every batch, so the driver parses and prepares it once; an IN list of 500
        parameters was re-parsed on every call and took a third of a PostgreSQL load's time."""
        if self.postgres:
            return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.String)))
        return column.in_(values)

    def _insert_rows(self, conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list[tuple],
                     ignore_conflicts: bool = False) -> None:
        """executemany with plain tuples: SQLAlchemy's per-row parameter processing cost more than
        the insert itself in the ingestion benchmark, and these rows are already in column order.
        On PostgreSQL (psycopg 3) one statement per row cost most of a load's time instead, so rows
        go in with COPY (see ``_copy_rows``)."""
        if not rows:
            return
        cols = ", ".join(f'"{c}"' for c in columns)
        if self.postgres and self.engine.dialect.driver == "psycopg":
            self._copy_rows(conn, table, cols, rows, ignore_conflicts)
            return
        marks = ", ".join("?" if self.engine.dialect.paramstyle == "qmark" else "%s" for _ in columns)
        if self.postgres:
            conn.exec_driver_sql(f"INSERT INTO {self.qualified(table.name)} ({cols}) VALUES ({marks})"  # noqa: S608 - identifiers are the warehouse's own, quoted
                                 + (" ON CONFLICT DO NOTHING" if ignore_conflicts else ""), rows)
        else:
            verb = "INSERT OR IGNORE INTO" if ignore_conflicts else "INSERT INTO"
            conn.exec_driver_sql(f"{verb} {self.qualified(table.name)} ({cols}) VALUES ({marks})", rows)

    def _copy_rows(self, conn: sa.Connection, table: sa.Table, cols: str, rows: list[tuple],
                   ignore_conflicts: bool) -> None:
        """COPY, in the transaction of ``conn``. COPY cannot skip conflicting rows, so rows that may
        repeat a key (a replayed history version, an id seen twice) are copied into a temporary
        table first and moved with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. (Multi-row
        VALUES and ``unnest`` of arrays were both slower: psycopg parses long statements and dumps
        text arrays in Python.)"""
        target = self.qualified(table.name)
        if ignore_conflicts:
            stage = f'"stage_{table.name}"'
            conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {stage} AS SELECT {cols} FROM {target} WITH NO DATA")  # noqa: S608 - identifiers are the warehouse's own, quoted
        with conn.connection.driver_connection.cursor() as cursor:
            with cursor.copy(f"COPY {stage if ignore_conflicts else target} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        if ignore_conflicts:
            conn.exec_driver_sql(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING")  # noqa: S608 - identifiers are the warehouse's own, quoted
            conn.exec_driver_sql(f"TRUNCATE {stage}")

    def _insert_children(self, conn: sa.Connection, resource_type: str, rows: list[RawRow]) -> None:
        batches: dict[str, list[tuple[Any, ...]]] = {name: [] for name in CHILD_TABLES}
        for row in rows:
            for name, children in row.child_rows(resource_type).items():
                batches[name].extend(children)
        for name, children in batches.items():
            self._insert_rows(conn, self._tables[name], CHILD_COLUMNS[name], children)

    def _quarantine(self, conn: sa.Connection, rows: Sequence[QuarantineRow], stored: dict[str, _Stored],
                    now: datetime) -> int:
        if not rows:
            return 0
        table = self._tables[QUARANTINE]
        by_key: dict[tuple[str, str], QuarantineRow] = {}
        for q in rows:
            by_key.setdefault((q.resource_type, hashlib.sha256(q.raw.encode()).hexdigest()), q)
        existing: set[tuple[str, str]] = set()
        keys = list(by_key)
        for i in range(0, len(keys), _IN_CHUNK):
            chunk = keys[i:i + _IN_CHUNK]
            query = sa.select(table.c.resource_type, table.c.fingerprint).where(
                sa.tuple_(table.c.resource_type, table.c.fingerprint).in_(chunk))
            existing.update(tuple(r) for r in conn.execute(query))
        fresh = []
        for key, q in by_key.items():
            old = stored.get(q.resource_id) if q.resource_id else None
            current = q.may_supersede and (old is None or _supersedes(q, old))
            if key in existing:
                conn.execute(table.update().where(table.c.resource_type == key[0], table.c.fingerprint == key[1])
                             .values(last_seen=now, current=current))
            else:
                fresh.append({"resource_type": key[0], "fingerprint": key[1], "resource_id": q.resource_id,
                              "version_id": q.version_id, "raw": q.raw, "errors": orjson.dumps(q.errors).decode(),
                              "source": q.source, "first_seen": now, "last_seen": now, "current": current})
        if fresh:
            conn.execute(table.insert(), fresh)
        return len(fresh)

    def current_ids(self, resource_type: str) -> set[str]:
        raw = self._raw_table(resource_type)
        if not self.has_table(raw.name):
            return set()
        with self.engine.connect() as conn:
            return {rid for (rid,) in conn.execute(sa.select(raw.c.id))}

    def current_count(self, resource_type: str) -> int:
        raw = self._raw_table(resource_type)
        if not self.has_table(raw.name):
            return 0
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(raw)).scalar() or 0)

    def retire_quarantine(self, resource_type: str, seen_since: datetime) -> None:
        """After a full pass: quarantined versions not seen again in it are no longer current
        (the server deleted or fixed them; a resource still bad was re-quarantined just now)."""
        table = self._tables[QUARANTINE]
        with self.engine.begin() as conn:
            conn.execute(table.update().where(table.c.resource_type == resource_type, table.c.current.is_(True),
                                              table.c.last_seen < seen_since).values(current=False))

    def retire_quarantine_missing_from(self, seen: "SeenIds") -> None:
        """After an id-only reconciliation: quarantined ids the server no longer has are not current."""
        seen.flush()
        table, scratch = self._tables[QUARANTINE], self._tables[SEEN_IDS]
        with self.engine.begin() as conn:
            conn.execute(table.update().where(
                table.c.resource_type == seen.resource_type, table.c.current.is_(True), table.c.resource_id.is_not(None),
                ~sa.exists().where(scratch.c.resource_type == seen.resource_type, scratch.c.id == table.c.resource_id))
                .values(current=False))

    def ids_missing_from(self, seen: "SeenIds") -> Iterator[list[str]]:
        """Current ids of the type that a full pass did not see, in chunks (computed in SQL)."""
        seen.flush()
        raw, scratch = self._raw_table(seen.resource_type), self._tables[SEEN_IDS]
        query = (sa.select(raw.c.id).where(~sa.exists().where(scratch.c.resource_type == seen.resource_type,
                                                                scratch.c.id == raw.c.id)).order_by(raw.c.id))
        with self.engine.connect() as conn:
            ids = [rid for (rid,) in conn.execute(query)]  # only the deleted ones: few
        for i in range(0, len(ids), _IN_CHUNK):
            yield ids[i:i + _IN_CHUNK]

    def quarantined_current(self, resource_type: str) -> int:
        table = self._tables[QUARANTINE]
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count(sa.distinct(sa.func.coalesce(table.c.resource_id, table.c.fingerprint))))
                                    .where(table.c.resource_type == resource_type, table.c.current.is_(True))).scalar() or 0)

    # ------------------------------------------------------------------ sync bookkeeping

    def _upsert(self, conn: sa.Connection, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        table = self._tables[name]
        where = [table.c[k] == v for k, v in key.items()]
        if conn.execute(table.update().where(*where).values(**values)).rowcount == 0:
            conn.execute(table.insert().values(**key, **values))

    def sync_state(self, resource_type: str) -> dict[str, Any] | None:
        table = self._tables[SYNC_STATE]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.resource_type == resource_type)).mappings().first()
        return dict(row) if row else None

    def save_sync_state(self, resource_type: str, *, watermark: str | None, watermark_source: str, mode: str,
                        full: bool) -> None:
        now = datetime.now(timezone.utc)
        values: dict[str, Any] = {"watermark": watermark, "watermark_source": watermark_source, "mode": mode, "checked_at": now}
        if full:
            values["last_full_sync"] = now
        with self.engine.begin() as conn:
            self._upsert(conn, SYNC_STATE, {"resource_type": resource_type}, values)

    def touch_sync_state(self, resource_type: str) -> None:
        """Record that the data was confirmed current now (the default data cut-off) without changing anything else."""
        with self.engine.begin() as conn:
            table = self._tables[SYNC_STATE]
            conn.execute(table.update().where(table.c.resource_type == resource_type)
                         .values(checked_at=datetime.now(timezone.utc)))

    def save_counts(self, resource_type: str, scope: str, server_count: int | None) -> dict[str, Any]:
        warehouse_count = self.current_count(resource_type)  # counted in SQL: a set of every id grew with the hospital
        values = {"scope": scope, "server_count": server_count, "warehouse_count": warehouse_count,
                  "quarantined_current": self.quarantined_current(resource_type), "checked_at": datetime.now(timezone.utc)}
        with self.engine.begin() as conn:
            self._upsert(conn, INGEST_COUNTS, {"resource_type": resource_type}, values)
        return {"resource_type": resource_type, **values}

    def counts(self, resource_type: str) -> dict[str, Any] | None:
        table = self._tables[INGEST_COUNTS]
        if not self.has_table(INGEST_COUNTS):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.resource_type == resource_type)).mappings().first()
        return dict(row) if row else None

    def open_bulk_job(self) -> dict[str, Any] | None:
        table = self._tables[BULK_JOBS]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.state == "polling")
                               .order_by(table.c.kicked_off_at.desc())).mappings().first()
        return dict(row) if row else None

    def record_bulk_job(self, status_url: str, request: str | None = None, *, state: str,
                        transaction_time: str | None = None) -> None:
        now = datetime.now(timezone.utc)
        values: dict[str, Any] = {"state": state}
        if request is not None:
            values.update(request=request, kicked_off_at=now)
        if transaction_time is not None:
            values["transaction_time"] = transaction_time
        if state != "polling":
            values["finished_at"] = now
        with self.engine.begin() as conn:
            self._upsert(conn, BULK_JOBS, {"status_url": status_url}, values)

    # ------------------------------------------------------------------ reading

    def raw_resources(self, resource_type: str) -> list[dict[str, Any]]:
        """Every current resource of a type, parsed (empty when the type was never pulled)."""
        table = self._raw_table(resource_type)
        if not self.has_table(table.name):
            return []
        with self.engine.connect() as conn:
            return [orjson.loads(text) for (text,) in conn.execute(sa.select(table.c.resource).order_by(table.c.id))]

    def extraction_time(self, resource_type: str = "Patient") -> datetime | None:
        """When ``resource_type`` was last confirmed current on the server: the default data cut-off."""
        if not self.has_table(SYNC_STATE):
            return None
        state = self.sync_state(resource_type)
        return state["checked_at"] if state else None

    def replace_table(self, name: str, frame: pd.DataFrame, primary_key: list[str] | None = None) -> None:
        """Replace a derived table's rows with ``frame`` in one transaction.

        On PostgreSQL an existing table with the same columns is emptied and refilled rather than
        dropped, so the views on it and the grants to analysts survive every run."""
        schema = self.schema_of(name)
        with self.engine.begin() as conn:
            if schema:
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            inspector = sa.inspect(conn)
            exists = inspector.has_table(name, schema=schema)
            same_columns = exists and [c["name"] for c in inspector.get_columns(name, schema=schema)] == [str(c) for c in frame.columns]
            if self.postgres and same_columns:
                conn.execute(sa.text(f"DELETE FROM {self.qualified(name)}"))  # noqa: S608 - identifiers are the warehouse's own, quoted
                frame.to_sql(name, conn, schema=schema, if_exists="append", index=False, method="multi", chunksize=1000)
                return
            if self.postgres and exists:
                conn.execute(sa.text(f"DROP TABLE {self.qualified(name)} CASCADE"))  # views are recreated after the write
            frame.to_sql(name, conn, schema=schema, if_exists="replace", index=False,
                         method="multi" if self.postgres else None, chunksize=1000 if self.postgres else None)
            if primary_key and self.postgres:
                cols = ", ".join(f'"{c}"' for c in primary_key)
                conn.execute(sa.text(f"ALTER TABLE {self.qualified(name)} ADD PRIMARY KEY ({cols})"))

    def read_table(self, name: str) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql_table(name, conn, schema=self.schema_of(name))

    def has_table(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name, schema=self.schema_of(name))

    def execute_script(self, statements: Iterable[str]) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))


class SeenIds:
    """The ids a full pass saw, spilled to a scratch table in batches so memory stays flat however
    many resources the server holds; deletes are then found in SQL (``ids_missing_from``)."""

    def __init__(self, warehouse: Warehouse, resource_type: str, batch_size: int = 5000) -> None:
        self.warehouse, self.resource_type, self.batch_size = warehouse, resource_type, batch_size
        self.started = datetime.now(timezone.utc)
        self._buffer: list[tuple[str, str]] = []
        self._count = 0
        warehouse.ensure_schema([resource_type])
        table = warehouse.table(SEEN_IDS)
        with warehouse.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.resource_type == resource_type))

    def add(self, resource_id: str) -> None:
        self._buffer.append((self.resource_type, resource_id))
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            with self.warehouse.engine.begin() as conn:
                self.warehouse._insert_rows(conn, self.warehouse.table(SEEN_IDS), ("resource_type", "id"), self._buffer,
                                            ignore_conflicts=True)
            self._buffer = []

    def __len__(self) -> int:
        self.flush()
        table = self.warehouse.table(SEEN_IDS)
        with self.warehouse.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)
                                    .where(table.c.resource_type == self.resource_type)).scalar() or 0)
