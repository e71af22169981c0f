"""The ids one full pass saw, kept in a scratch table instead of memory.

A full pass must find the ids the server no longer has; a Python set of every id grew with the
hospital, so the ids are spilled to ``sync_seen_ids`` in batches and deletes are found in SQL
(``Warehouse.ids_missing_from``).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .schema import SEEN_IDS

if TYPE_CHECKING:
    from .store import Warehouse


class SeenIds:
    """The ids a full pass saw, spilled to a scratch table in batches so memory stays flat however
    many resources the server holds; deletes are then found in SQL (``ids_missing_from``)."""

    def __init__(self, warehouse: "Warehouse", resource_type: str, batch_size: int = 20_000) -> None:
        self.warehouse, self.resource_type, self.batch_size = warehouse, resource_type, batch_size
        self.started = datetime.now(timezone.utc)
        self._buffer: list[tuple[str, str]] = []
        warehouse.ensure_schema([resource_type])
        table = warehouse.table(SEEN_IDS)
        with warehouse.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.resource_type == resource_type))

    def add(self, resource_id: str) -> None:
        self._buffer.append((self.resource_type, resource_id))
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def extend(self, resource_ids: list[str]) -> None:
        """``add`` of each (a worker's run of valid rows at once)."""
        rtype = self.resource_type
        self._buffer.extend([(rtype, rid) for rid in resource_ids])
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            with self.warehouse.engine.begin() as conn:
                self.warehouse.insert_rows(conn, self.warehouse.table(SEEN_IDS), ("resource_type", "id"), self._buffer,
                                            ignore_conflicts=True)
            self._buffer = []

    def __len__(self) -> int:
        self.flush()
        table = self.warehouse.table(SEEN_IDS)
        with self.warehouse.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)
                                    .where(table.c.resource_type == self.resource_type)).scalar() or 0)
