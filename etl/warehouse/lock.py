"""One writer of the raw tables at a time.

Two ingestions at once broke each other's unique keys, so a second one waits for the first, then
fails with a clear message. PostgreSQL: a session advisory lock; SQLite: an exclusive ``flock`` on a
file beside the database (an in-memory database has one connection anyway).
"""
from __future__ import annotations

import fcntl
import hashlib
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa


class WarehouseBusy(RuntimeError):
    """Another run holds the warehouse's ingestion lock."""


@contextmanager
def exclusive(engine: sa.Engine, purpose: str = "ingest", wait_s: float = 600.0, poll_s: float = 0.5) -> Iterator[None]:
    deadline = time.monotonic() + wait_s
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"iimild:{purpose}".encode()).digest()[:8], "big", signed=True)
        with engine.connect() as conn:
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() > deadline:
                    raise WarehouseBusy(f"another {purpose} run holds the warehouse lock; waited {wait_s:.0f}s")
                time.sleep(poll_s)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    database = engine.url.database
    if database in (None, "", ":memory:"):
        yield
        return
    path = Path(f"{database}.{purpose}.lock")
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
