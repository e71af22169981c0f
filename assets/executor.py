"""The executor of the service's jobs: Dagster's multiprocess executor, its steps forked from a fork server.

With ``spawn`` (Dagster's default) every step is a fresh interpreter that imports Dagster and the definitions
again before its step starts: 7-9 s per step on the reference machine, most of the paper-size hospital's run.
A fork server imports them once (``preload_modules``: the code location's module) and forks each step from it.

The catch, and why this is more than configuration: the processes multiprocessing starts take the sys.path of
the process that starts them (the run coordinator, e.g. the ``dagster`` command), not the code location's
working directory, which Dagster puts on sys.path only while it imports the definitions. With a virtual
environment installed from another copy of the project (an editable install elsewhere, a symlinked ``.venv``),
any module imported after the fork, in a step or in a process pool a step starts, came from that other copy.
So before it starts any process the executor puts this checkout's root first on sys.path (which steps and
their spawned workers inherit) and on PYTHONPATH (which the fork server's own interpreter reads).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import dagster as dg

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


def project_first_on_path(root: str = PROJECT_ROOT) -> None:
    """This checkout first on sys.path and PYTHONPATH, for every process started from this one."""
    sys.path[:] = [root, *(p for p in sys.path if p != root)]
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *rest])


# Imported by the fork server beside the code location's module: every step's checks import Great Expectations
# (expectations/runner.py imports it lazily, 5 CPU s), so the fork server imports it once for all of them.
PRELOAD_BESIDE_DEFINITIONS = ("great_expectations",)


@dg.executor(name="multiprocess_forkserver", config_schema=dg.multiprocess_executor.config_schema.as_field(),
             requirements=dg.multiple_process_executor_requirements())
def forkserver_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's multiprocess executor and its run config, with ``start_method`` ``forkserver`` unless the run
    config names one (``execution: {config: {start_method: {spawn: {}}}}`` goes back to spawning every step).

    The definitions' default executor: every job without an executor of its own (the asset jobs, ``study_job``,
    the operators' ``asset materialize --select '*'``); the Celery job (assets/distributed.py) keeps its own."""
    project_first_on_path()
    config = dict(init_context.executor_config)
    start = dict(config.get("start_method") or {"forkserver": {}})
    module = getattr(init_context.job, "get_module", lambda: None)()  # a ReconstructableJob's module, if any
    if "forkserver" in start and module and "preload_modules" not in (start["forkserver"] or {}):
        # Dagster's default preload is the code location's module alone.
        start["forkserver"] = {"preload_modules": [module, *PRELOAD_BESIDE_DEFINITIONS]}
    config["start_method"] = start
    return dg.multiprocess_executor.executor_creation_fn(init_context._replace(executor_config=config))
