"""A throwaway database on a PostgreSQL server, for the tests and the ingestion benchmark."""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa


@contextmanager
def scratch_database(server_url: str, prefix: str, search_path: str | None = None) -> Iterator[str]:
    """Create a fresh database on the server of ``server_url`` and yield its URL; drop it afterwards,
    even while a connection is still open. ``search_path`` becomes the database's default."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            if search_path:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" SET search_path = {search_path}'))
        yield sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
