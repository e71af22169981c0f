"""Ingestion bookkeeping: per-type sync state (watermarks), server-vs-warehouse counts, and Bulk export jobs.

A mixin of ``Warehouse``: these small tables are read and written by every sync mode, and keeping
them apart from the load path lets each be read on its own.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .schema import BULK_JOBS, INGEST_COUNTS, SYNC_STATE

if TYPE_CHECKING:
    from .schema import Tables


class Bookkeeping:
    engine: sa.Engine
    tables: "Tables"


    def _upsert(self, conn: sa.Connection, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        table = self.tables[name]
        where = [table.c[k] == v for k, v in key.items()]
        if conn.execute(table.update().where(*where).values(**values)).rowcount == 0:
            conn.execute(table.insert().values(**key, **values))

    def sync_state(self, resource_type: str) -> dict[str, Any] | None:
        table = self.tables[SYNC_STATE]
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
            table = self.tables[SYNC_STATE]
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
        table = self.tables[INGEST_COUNTS]
        if not self.has_table(INGEST_COUNTS):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.resource_type == resource_type)).mappings().first()
        return dict(row) if row else None

    def open_bulk_job(self) -> dict[str, Any] | None:
        table = self.tables[BULK_JOBS]
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
