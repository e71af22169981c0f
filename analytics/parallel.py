"""How the statistics use the CPUs.

The analysis is many small array operations (Newton steps on a few thousand cells, a 9-column logistic refit),
for which a multi-threaded BLAS only adds hand-offs between threads: on the 2-core reference machine shared with
other steps, OpenBLAS's threads made a 15,000-element dot product take 20 ms instead of 0.02 ms (issue 16). So
the analysis runs with single-threaded BLAS (threadpoolctl, restored on exit), and uses the cores through
processes instead: the bootstrap's replicates (``n_jobs``), each process single-threaded too.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext

from threadpoolctl import threadpool_limits


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def resolve_jobs(n_jobs: int) -> int:
    """``n_jobs`` as joblib reads it: 1 runs in this process, n > 1 in n worker processes, -1 on every usable CPU."""
    if n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be a positive number of processes or -1 (all CPUs), not {n_jobs}")
    return len(os.sched_getaffinity(0)) if n_jobs == -1 else n_jobs


def worker_context() -> BaseContext:
    """Worker processes forked from a fork server: a fresh single-threaded interpreter, started once per process.
    Forking the caller itself would copy a process that may hold threads and their locks (a Dagster step does);
    ``spawn`` would start a whole interpreter per worker. Either way each worker imports the caller's main module
    again (multiprocessing's start-up), which costs a few seconds when that is Dagster's command line: worth it
    only for a long bootstrap (see benchmarks/statistics.py)."""
    return multiprocessing.get_context("forkserver")
