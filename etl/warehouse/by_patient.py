"""Reading raw resources patient by patient, for steps whose memory must grow with a chunk of patients
rather than with the hospital (the cohort step: README, "The cohort in chunks of patients").

A mixin of ``Warehouse``. The raw tables hold each resource as JSON text; which patient a resource
is about is read by the database itself (SQLite's ``json_extract``, PostgreSQL's ``#>>`` on the text
cast to ``json``), so an index of the whole hospital costs one pass of small rows, not one parsed
resource each. Nothing is written: the index is read afresh each run, so re-runs, resources loaded
or deleted since, and warehouses loaded before this existed all need nothing more.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

if TYPE_CHECKING:
    from .schema import Tables

_STREAM_ROWS = 20_000  # rows fetched per round trip while streaming an index


class ResourcesByPatient:
    engine: sa.Engine
    tables: "Tables"
    postgres: bool
    has_table: Callable[[str], bool]  # DerivedTables

    def _json_text(self, column: sa.ColumnElement[Any], path: Sequence[str]) -> sa.ColumnElement[Any]:
        """The JSON value at ``path`` as text (a string as itself, an object or array as JSON), NULL when absent."""
        if self.postgres:
            return sa.cast(column, postgresql.JSON)[tuple(path)].astext
        return sa.func.json_extract(column, "$." + ".".join(path))

    def json_index(self, resource_type: str, *paths: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """(id, value at each path as text) of every current resource of a type, in the table's id order,
        streamed. Values are as the database reads them: a number may come back as a number on SQLite."""
        table = self.tables.raw(resource_type)
        if not self.has_table(table.name):
            return
        query = sa.select(table.c.id, *(self._json_text(table.c.resource, p) for p in paths)).order_by(table.c.id)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS).execute(query)
            for row in result:
                yield tuple(row)

    def ids_by_value(self, resource_type: str, path: Sequence[str]) -> Iterator[tuple[Any, list[str]]]:
        """(value at ``path`` as text, the ids of every current resource of a type with that value, in the table's
        id order), one row per distinct value: the database groups the rows, so this process reads one row per
        patient rather than one per resource (the rows, not the JSON, were most of the cohort index's time)."""
        table = self.tables.raw(resource_type)
        if not self.has_table(table.name):
            return
        value = self._json_text(table.c.resource, path)
        if self.postgres:
            ids = sa.func.array_agg(postgresql.aggregate_order_by(table.c.id, table.c.id))
        else:
            ids = sa.func.json_group_array(table.c.id)  # in no promised order: sorted below
        with self.engine.connect() as conn:
            for found, grouped in conn.execute(sa.select(value, ids).group_by(value)):
                # SQLite compares text with BINARY (the bytes of UTF-8), which orders as Python orders str.
                yield found, grouped if self.postgres else sorted(orjson.loads(grouped))

    def distinct_values(self, resource_type: str, *paths: Sequence[str]) -> list[tuple[Any, ...]]:
        """Every distinct combination of the values at ``paths`` (as ``json_index`` reads them) among a type's current
        resources, in no particular order."""
        table = self.tables.raw(resource_type)
        if not self.has_table(table.name):
            return []
        query = sa.select(*(self._json_text(table.c.resource, p) for p in paths)).distinct()
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def raw_resources_by_id(self, resource_type: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The current resources of a type with these ids, parsed, keyed by id (ids not stored are left out).

        One statement per call whatever the number of ids, with the ids as one parameter (a JSON array that
        SQLite's ``json_each`` unpacks; a PostgreSQL array), run on the driver's own cursor: IN lists of 500
        compiled by SQLAlchemy and its per-row result objects cost as much as parsing the JSON itself."""
        table = self.tables.raw(resource_type)
        if not ids:
            return {}
        name = self.engine.dialect.identifier_preparer.format_table(table)
        if self.postgres:
            sql, param = f"SELECT id, resource FROM {name} WHERE id = ANY(%s)", list(ids)  # noqa: S608 - our own table name, quoted
        else:
            sql, param = f"SELECT id, resource FROM {name} WHERE id IN (SELECT value FROM json_each(?))", orjson.dumps(list(ids)).decode()  # noqa: S608
        with self.engine.connect() as conn:
            cursor = conn.connection.cursor()
            try:
                cursor.execute(sql, (param,))
                return {rid: orjson.loads(text) for rid, text in cursor}
            finally:
                cursor.close()
