"""A code location for tests/assets/test_executor.py: one asset, on the service's executor, that writes where its
step and a worker of the cohort step's pool import the project's modules from (PROBE_OUT, a JSON file)."""
import json
import multiprocessing
import os
import sys

import dagster as dg

from assets.executor import forkserver_executor
from assets.study import cohort_source


def where_imported(_: int = 0) -> dict:
    import analytics.cohort.tables  # imported in the worker, as _run's chunks import the rules
    return {"cohort_source": cohort_source.__file__, "tables": analytics.cohort.tables.__file__, "pid": os.getpid(),
            "sys_path_0": sys.path[0],
            "start_method": multiprocessing.get_start_method(allow_none=True)}


@dg.asset
def probe() -> None:
    with cohort_source.worker_pool(1) as pool:
        worker = pool.submit(where_imported).result()
    with open(os.environ["PROBE_OUT"], "w") as out:
        json.dump({"step": where_imported(), "worker": worker}, out)


defs = dg.Definitions(assets=[probe], executor=forkserver_executor)
