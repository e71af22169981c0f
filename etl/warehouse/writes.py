"""How rows reach the database fast on each dialect: plain tuples with executemany on SQLite, COPY on
PostgreSQL, and the connection settings that make SQLite a good single-writer store.

Kept apart from the upsert rules (``store``) because it is about the drivers, not about FHIR.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def sqlite_write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
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


def driver_time(engine: sa.Engine, moment: datetime) -> Any:
    """A timestamp as the driver should receive it: SQLAlchemy's own SQLite text format (naive UTC)."""
    if engine.dialect.name == "sqlite":
        return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return moment


def among(postgres: bool, column: sa.ColumnElement[Any], values: Sequence[str]) -> sa.ColumnElement[bool]:
    """``column IN (values)``. On PostgreSQL ``= ANY(<one array parameter>)``: the statement text
    stays the same for every batch, so the driver parses and prepares it once; an IN list of 500
    parameters was re-parsed on every call and took a third of a PostgreSQL load's time."""
    if postgres:
        return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.String)))
    return column.in_(values)


def insert_rows(conn: sa.Connection, target: str, columns: Sequence[str], rows: list[tuple],
                ignore_conflicts: bool = False) -> None:
    """executemany with plain tuples: SQLAlchemy's per-row parameter processing cost more than
    the insert itself in the ingestion benchmark, and these rows are already in column order.
    On PostgreSQL (psycopg 3) one statement per row cost most of a load's time instead, so rows
    go in with COPY (see ``copy_rows``)."""
    if not rows:
        return
    cols = ", ".join(f'"{c}"' for c in columns)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        copy_rows(conn, target, cols, rows, ignore_conflicts)
        return
    marks = ", ".join("?" if conn.dialect.paramstyle == "qmark" else "%s" for _ in columns)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"INSERT INTO {target} ({cols}) VALUES ({marks})"  # noqa: S608 - identifiers are the warehouse's own, quoted
                             + (" ON CONFLICT DO NOTHING" if ignore_conflicts else ""), rows)
    else:
        verb = "INSERT OR IGNORE INTO" if ignore_conflicts else "INSERT INTO"
        conn.exec_driver_sql(f"{verb} {target} ({cols}) VALUES ({marks})", rows)


def copy_rows(conn: sa.Connection, target: str, cols: str, rows: list[tuple], ignore_conflicts: bool) -> None:
    """COPY, in the transaction of ``conn``. COPY cannot skip conflicting rows, so rows that may
    repeat a key (a replayed history version, an id seen twice) are copied into a temporary
    table first and moved with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. (Multi-row
    VALUES and ``unnest`` of arrays were both slower: psycopg parses long statements and dumps
    text arrays in Python.)"""
    if ignore_conflicts:
        stage = '"stage_' + target.split('.')[-1].strip('"') + '"'
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {stage} AS SELECT {cols} FROM {target} WITH NO DATA")  # noqa: S608 - identifiers are the warehouse's own, quoted
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy(f"COPY {stage if ignore_conflicts else target} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    if ignore_conflicts:
        conn.exec_driver_sql(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING")  # noqa: S608 - identifiers are the warehouse's own, quoted
        conn.exec_driver_sql(f"TRUNCATE {stage}")
