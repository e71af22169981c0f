"""Reading raw resources and writing the derived study tables.

A mixin of ``Warehouse``: the study assets only read raw JSON and replace whole derived tables, and
none of the load path's upsert rules apply to them.
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import orjson
import pandas as pd
import sqlalchemy as sa

from .schema import SYNC_STATE

if TYPE_CHECKING:
    from .schema import Tables


class DerivedTables:
    engine: sa.Engine
    tables: "Tables"
    postgres: bool


    def raw_resources(self, resource_type: str) -> list[dict[str, Any]]:
        """Every current resource of a type, parsed (empty when the type was never pulled)."""
        table = self.tables.raw(resource_type)
        if not self.has_table(table.name):
            return []
        with self.engine.connect() as conn:
            return [orjson.loads(text) for (text,) in conn.execute(sa.select(table.c.resource).order_by(table.c.id))]

    def raw_resource_batches(self, resource_type: str, batch_size: int = 5_000) -> Iterator[list[dict[str, Any]]]:
        """``raw_resources`` in batches of at most ``batch_size``, in the same order, read through a streaming cursor
        (a server-side cursor on PostgreSQL): memory holds one batch, not the table."""
        table = self.tables.raw(resource_type)
        if not self.has_table(table.name):
            return
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch_size).execute(sa.select(table.c.resource).order_by(table.c.id))
            for rows in result.partitions():
                yield [orjson.loads(text) for (text,) in rows]

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
