"""The SQL warehouse behind every table this service writes (SQLAlchemy 2; SQLite or PostgreSQL).

Raw tables hold each FHIR resource's JSON with its id, versionId and lastUpdated, one table per
resource type. A full pull replaces a type's raw rows and its quarantine rows in one transaction,
so a crash mid-load leaves the previous pull intact, and re-running a pull is idempotent.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import orjson
import pandas as pd
import sqlalchemy as sa

QUARANTINE = "quarantine"


def raw_table_name(resource_type: str) -> str:
    return f"raw_{resource_type.lower()}"


@dataclass(frozen=True)
class RawRow:
    id: str
    version_id: str | None
    last_updated: str | None
    resource: dict[str, Any]
    source: str


@dataclass(frozen=True)
class QuarantineRow:
    resource_type: str
    resource_id: str | None
    raw: str
    errors: list[str]
    source: str


class Warehouse:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url, future=True)
        self.metadata = sa.MetaData()

    def _raw_table(self, resource_type: str) -> sa.Table:
        name = raw_table_name(resource_type)
        if name not in self.metadata.tables:
            sa.Table(
                name, self.metadata,
                sa.Column("id", sa.String(64), primary_key=True),
                sa.Column("version_id", sa.String(64)),
                sa.Column("last_updated", sa.String(40)),
                sa.Column("resource", sa.Text, nullable=False),
                sa.Column("source", sa.Text, nullable=False),
                sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
            )
        return self.metadata.tables[name]

    def _quarantine_table(self) -> sa.Table:
        if QUARANTINE not in self.metadata.tables:
            sa.Table(
                QUARANTINE, self.metadata,
                sa.Column("resource_type", sa.String(64), nullable=False, index=True),
                sa.Column("resource_id", sa.String(64)),
                sa.Column("raw", sa.Text, nullable=False),
                sa.Column("errors", sa.Text, nullable=False),
                sa.Column("source", sa.Text, nullable=False),
                sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
            )
        return self.metadata.tables[QUARANTINE]

    def replace_raw(self, resource_type: str, rows: Iterable[RawRow], quarantined: Iterable[QuarantineRow]) -> None:
        """Make the warehouse hold exactly this pull of ``resource_type``, atomically."""
        raw, quarantine = self._raw_table(resource_type), self._quarantine_table()
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            self.metadata.create_all(conn, tables=[raw, quarantine])
            conn.execute(raw.delete())
            conn.execute(quarantine.delete().where(quarantine.c.resource_type == resource_type))
            batch = [{"id": r.id, "version_id": r.version_id, "last_updated": r.last_updated,
                      "resource": orjson.dumps(r.resource).decode(), "source": r.source, "loaded_at": now} for r in rows]
            if batch:
                conn.execute(raw.insert(), batch)
            qbatch = [{"resource_type": q.resource_type, "resource_id": q.resource_id, "raw": q.raw,
                       "errors": orjson.dumps(q.errors).decode(), "source": q.source, "seen_at": now} for q in quarantined]
            if qbatch:
                conn.execute(quarantine.insert(), qbatch)

    def raw_resources(self, resource_type: str) -> list[dict[str, Any]]:
        """Every current resource of a type, parsed (empty when the type was never pulled)."""
        table = self._raw_table(resource_type)
        if not sa.inspect(self.engine).has_table(table.name):
            return []
        with self.engine.connect() as conn:
            return [orjson.loads(text) for (text,) in conn.execute(sa.select(table.c.resource).order_by(table.c.id))]

    def extraction_time(self, resource_type: str = "Patient") -> datetime | None:
        """When ``resource_type`` was last pulled: the default data cut-off."""
        table = self._raw_table(resource_type)
        if not sa.inspect(self.engine).has_table(table.name):
            return None
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(table.c.loaded_at))).scalar()

    def replace_table(self, name: str, frame: pd.DataFrame, primary_key: list[str] | None = None) -> None:
        """Replace a derived table with ``frame`` in one transaction."""
        with self.engine.begin() as conn:
            frame.to_sql(name, conn, if_exists="replace", index=False)
            if primary_key and self.engine.dialect.name == "postgresql":
                cols = ", ".join(f'"{c}"' for c in primary_key)
                conn.execute(sa.text(f'ALTER TABLE "{name}" ADD PRIMARY KEY ({cols})'))

    def read_table(self, name: str) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql_table(name, conn)

    def has_table(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name)
