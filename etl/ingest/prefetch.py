"""Run a blocking producer (HTTP paging) in a thread, a bounded number of batches ahead.

In a REST pull the same thread used to wait for the server's next page and then write the
previous page to the warehouse; with the pages fetched ahead, the server works while we write.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], batch: int = 200, depth: int = 8) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` batches ahead. An exception
    in the producer is raised here, in the consumer, at the point the items ran out; closing this
    generator early stops the producer at its next batch."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        pending: list[T] = []
        try:
            for item in items:
                pending.append(item)
                if len(pending) >= batch:
                    if not put(pending):
                        return
                    pending = []
            if pending and not put(pending):
                return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it after the items before it
            if not pending or put(pending):
                put(exc)

    thread = threading.Thread(target=produce, name="fhir-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = handoff.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            yield from got  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
