"""etl.ingest.prefetch.prefetched: order kept, producer errors surface, an abandoned consumer stops the producer."""
from __future__ import annotations

import threading
import time

import pytest

from etl.ingest.prefetch import prefetched


def test_items_arrive_complete_and_in_order():
    assert list(prefetched(range(1001), batch=7, depth=2)) == list(range(1001))


def test_an_error_in_the_producer_is_raised_after_the_items_before_it():
    def items():
        yield from range(5)
        raise ValueError("page 2 failed")

    got = []
    with pytest.raises(ValueError, match="page 2 failed"):
        for item in prefetched(items(), batch=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_closing_the_consumer_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    consumer = prefetched(items(), batch=10, depth=2)
    assert next(consumer) == 0
    consumer.close()
    time.sleep(0.3)
    assert len(produced) <= 10 * (2 + 2)  # at most the queued batches, the one being put, the one being filled
    assert not any(t.name == "fhir-prefetch" and t.is_alive() for t in threading.enumerate())
