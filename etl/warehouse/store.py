"""Loading raw FHIR data into the warehouse (SQLAlchemy 2; SQLite or PostgreSQL).

Raw FHIR data lives in two layers, written in one transaction per batch:

* ``raw_<type>``: the current version of every resource (id, versionId, lastUpdated, JSON);
* ``raw_history``: every version and tombstone ever loaded, keyed by (type, id, version).

Loads are upserts keyed by (type, id): a version that is already stored is skipped, an older one
never overwrites a newer one, so replaying any batch (a crash and a re-run, a page served twice,
an overlapping ``_lastUpdated`` window) leaves the same tables. Invalid resources go to
``quarantine``, keyed by their content fingerprint, with the first and last time they were seen;
``current`` says whether that bad version is still the server's latest for its id.

``Warehouse`` is the one object callers hold; its bookkeeping tables (``bookkeeping``), derived
tables (``tables``), table definitions (``schema``) and lock (``lock``) live in their own modules.
"""
from __future__ import annotations

import hashlib
import logging
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import orjson
import sqlalchemy as sa

from etl.records import ApplyResult, QuarantineRow, RawRow, Tombstone, is_newer, version_number

from .bookkeeping import Bookkeeping
from .by_patient import ResourcesByPatient
from .lock import exclusive
from .schema import (
    HISTORY,
    HISTORY_COLUMNS,
    INGEST_SCHEMA,
    QUARANTINE,
    RAW_COLUMNS,
    RESTRICTED_SCHEMA,
    RETIRED_TABLES,
    SEEN_IDS,
    Tables,
    schema_of,
)
from .tables import DerivedTables
from .writes import among, driver_time, insert_rows, sqlite_write_ahead_log

if TYPE_CHECKING:
    from .seen_ids import SeenIds

log = logging.getLogger(__name__)

_IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's variable limit

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
    a, b = version_number(q.version_id), version_number(stored.version_id)
    return a is None or b is None or a > b


def _version_key(version_id: str | None, last_updated: str | None, digest: str) -> str:
    return version_id or last_updated or digest[:32]


@dataclass
class _Stored:
    version_id: str | None
    last_updated: str | None
    digest: str


class WarehouseWriteError(RuntimeError):
    """A batch could not be written; the message names the table and the error, never the rows."""


class Warehouse(Bookkeeping, DerivedTables, ResourcesByPatient):
    def __init__(self, url: str) -> None:
        self.url = url
        # hide_parameters: a failed statement's message (an IntegrityError, say) must not carry the rows it
        # wrote into Dagster's logs, since those rows are patient resources.
        # pool_pre_ping: one warehouse serves a whole process (assets.resources), so a pooled connection may
        # outlive a database restart; it is tested before use instead of failing a step.
        self.engine = sa.create_engine(url, future=True, hide_parameters=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            sa.event.listen(self.engine, "connect", sqlite_write_ahead_log)
        self.postgres = self.engine.dialect.name == "postgresql"
        self.tables = Tables(self.postgres)
        self.metadata = self.tables.metadata
        self._retired_checked = False

    def exclusive(self, purpose: str = "ingest", wait_s: float = 600.0, poll_s: float = 0.5) -> AbstractContextManager[None]:
        """One writer of raw tables at a time (``etl.warehouse.lock``)."""
        return exclusive(self.engine, purpose, wait_s, poll_s)

    def schema_of(self, name: str) -> str | None:
        """The schema a table lives in (None on SQLite, which has one namespace)."""
        return schema_of(name, self.postgres)

    def qualified(self, name: str) -> str:
        schema = self.schema_of(name)
        return f'"{schema}"."{name}"' if schema else f'"{name}"'

    def table(self, name: str) -> sa.Table:
        return self.tables[name]

    def ensure_schema(self, resource_types: Iterable[str] = ()) -> None:
        raw = [self.tables.raw(t) for t in resource_types]
        with self.engine.begin() as conn:
            if self.postgres:
                for schema in (INGEST_SCHEMA, RESTRICTED_SCHEMA):
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        if not self._retired_checked:
            self._drop_retired_tables()
        self.metadata.create_all(self.engine, tables=[*self.tables.shared(), *raw])

    def _drop_retired_tables(self) -> None:
        """Derived copies of the raw JSON that are no longer kept current (schema.RETIRED_TABLES). A table that
        cannot be dropped (a view depends on it, another role owns it) is reported, not fatal: it is stale
        data, and ingestion must not stop for it."""
        self._retired_checked = True
        for name in RETIRED_TABLES:
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.qualified(name)}"))
            except sa.exc.DBAPIError as exc:
                log.warning("could not drop the retired table %s (%s): drop it by hand, it is no longer updated",
                            name, type(getattr(exc, "orig", exc)).__name__)

    # ------------------------------------------------------------------ loading
    def _stored(self, conn: sa.Connection, raw: sa.Table, ids: Sequence[str]) -> dict[str, _Stored]:
        out: dict[str, _Stored] = {}
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i:i + _IN_CHUNK]
            if self.postgres:
                query = sa.select(raw.c.id, raw.c.version_id, raw.c.last_updated, raw.c.content_hash).where(
                    self._among(raw.c.id, chunk))
                found = conn.execute(query)
            else:
                # The statement as text: compiling SQLAlchemy's IN list of 500 parameters for every chunk cost more
                # than SQLite's lookups (a tenth of the loading process in the ingestion benchmark).
                marks = ",".join("?" * len(chunk))
                found = conn.exec_driver_sql(f"SELECT id, version_id, last_updated, content_hash FROM "  # noqa: S608 - the table name is the warehouse's own, quoted; the ids are parameters
                                             f"{self.qualified(raw.name)} WHERE id IN ({marks})", tuple(chunk))
            for rid, vid, lu, digest in found:
                out[rid] = _Stored(vid, lu, digest)
        return out


    def _delete_current(self, conn: sa.Connection, raw: sa.Table, ids: Sequence[str]) -> None:
        for i in range(0, len(ids), _IN_CHUNK):
            conn.execute(raw.delete().where(self._among(raw.c.id, ids[i:i + _IN_CHUNK])))

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
        raw, history, quarantine = self.tables.raw(resource_type), self.tables[HISTORY], self.tables[QUARANTINE]
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
                digest = row.digest if row.digest is not None else row.content_digest()
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
                self._delete_current(conn, raw, gone)
            stamp = driver_time(self.engine, now)
            if changed:
                # the text without a call per row when a worker sent it (the loading process limits the step)
                texts = [r.text if r.text is not None else r.json_text() for r, _ in changed]
                self.insert_rows(conn, raw, RAW_COLUMNS,
                                  [(r.id, r.version_id, r.last_updated, d, t, r.source, stamp)
                                   for (r, d), t in zip(changed, texts, strict=True)])
                history_rows = [(resource_type, r.id, _version_key(r.version_id, r.last_updated, d), r.version_id,
                                 r.last_updated, False, t, r.source, stamp) for (r, d), t in zip(changed, texts, strict=True)]
            else:
                history_rows = []
            history_rows += [(resource_type, t.id, _version_key(t.version_id, t.last_updated, "deleted:" + now.isoformat()),
                              t.version_id, t.last_updated, True, None, t.source, stamp) for t in removals]
            if history_rows:
                # A version seen before (a replayed page) is already in the history: insert-or-ignore.
                self.insert_rows(conn, history, HISTORY_COLUMNS, history_rows, ignore_conflicts=True)
            valid_ids = [r.id for r, _ in changed] + list(deletes)  # a delete also ends a quarantined version
            if valid_ids and conn.execute(sa.select(quarantine.c.fingerprint).where(
                    quarantine.c.resource_type == resource_type, quarantine.c.current.is_(True)).limit(1)).first():
                for i in range(0, len(valid_ids), _IN_CHUNK):
                    conn.execute(quarantine.update().where(quarantine.c.resource_type == resource_type,
                                                           self._among(quarantine.c.resource_id, valid_ids[i:i + _IN_CHUNK]),
                                                           quarantine.c.current.is_(True)).values(current=False))
            result.quarantined = self._quarantine(conn, quarantined, stored, now)
        return result

    def insert_rows(self, conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list[tuple],
                    ignore_conflicts: bool = False) -> None:
        insert_rows(conn, self.qualified(table.name), columns, rows, ignore_conflicts)

    def _among(self, column: sa.ColumnElement[Any], values: Sequence[str]) -> sa.ColumnElement[bool]:
        return among(self.postgres, column, values)

    def _quarantine(self, conn: sa.Connection, rows: Sequence[QuarantineRow], stored: dict[str, _Stored],
                    now: datetime) -> int:
        if not rows:
            return 0
        table = self.tables[QUARANTINE]
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
        raw = self.tables.raw(resource_type)
        if not self.has_table(raw.name):
            return set()
        with self.engine.connect() as conn:
            return {rid for (rid,) in conn.execute(sa.select(raw.c.id))}

    def current_count(self, resource_type: str) -> int:
        raw = self.tables.raw(resource_type)
        if not self.has_table(raw.name):
            return 0
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(raw)).scalar() or 0)

    def retire_quarantine(self, resource_type: str, seen_since: datetime) -> None:
        """After a full pass: quarantined versions not seen again in it are no longer current
        (the server deleted or fixed them; a resource still bad was re-quarantined just now)."""
        table = self.tables[QUARANTINE]
        with self.engine.begin() as conn:
            conn.execute(table.update().where(table.c.resource_type == resource_type, table.c.current.is_(True),
                                              table.c.last_seen < seen_since).values(current=False))

    def retire_quarantine_missing_from(self, seen: "SeenIds") -> None:
        """After an id-only reconciliation: quarantined ids the server no longer has are not current."""
        seen.flush()
        table, scratch = self.tables[QUARANTINE], self.tables[SEEN_IDS]
        with self.engine.begin() as conn:
            conn.execute(table.update().where(
                table.c.resource_type == seen.resource_type, table.c.current.is_(True), table.c.resource_id.is_not(None),
                ~sa.exists().where(scratch.c.resource_type == seen.resource_type, scratch.c.id == table.c.resource_id))
                .values(current=False))

    def ids_missing_from(self, seen: "SeenIds") -> Iterator[list[str]]:
        """Current ids of the type that a full pass did not see, in chunks (computed in SQL)."""
        seen.flush()
        raw, scratch = self.tables.raw(seen.resource_type), self.tables[SEEN_IDS]
        query = (sa.select(raw.c.id).where(~sa.exists().where(scratch.c.resource_type == seen.resource_type,
                                                                scratch.c.id == raw.c.id)).order_by(raw.c.id))
        with self.engine.connect() as conn:
            ids = [rid for (rid,) in conn.execute(query)]  # only the deleted ones: few
        for i in range(0, len(ids), _IN_CHUNK):
            yield ids[i:i + _IN_CHUNK]

    def quarantined_current(self, resource_type: str) -> int:
        table = self.tables[QUARANTINE]
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count(sa.distinct(sa.func.coalesce(table.c.resource_id, table.c.fingerprint))))
                                    .where(table.c.resource_type == resource_type, table.c.current.is_(True))).scalar() or 0)

