"""The executor of the service's jobs: Dagster's multiprocess executor, its steps forked from a fork server.

With ``spawn`` (Dagster's default) every step is a fresh interpreter that imports Dagster and the definitions
again before its step starts: 7-9 s per step on the reference machine, most of the paper-size hospital's run.
A fork server imports them once (``preload_modules``: the code location's module, and what its steps import
lazily: assets/forkserver.py) and forks each step from it. The project's ``dagster`` command starts that fork
server before it loads the definitions itself, so the two imports overlap (assets/forkserver.py, ``start_early``).

The catch, and why this is more than configuration: the processes multiprocessing starts take the sys.path of
the process that starts them (the run coordinator, e.g. the ``dagster`` command), not the code location's
working directory, which Dagster puts on sys.path only while it imports the definitions. With a virtual
environment installed from another copy of the project (an editable install elsewhere, a symlinked ``.venv``),
any module imported after the fork, in a step or in a process pool a step starts, came from that other copy.
So before it starts any process the executor puts this checkout's root first on sys.path (which steps and
their spawned workers inherit) and on PYTHONPATH (which the fork server's own interpreter reads).
"""
from __future__ import annotations

import dagster as dg

from .forkserver import PRELOAD_BESIDE_DEFINITIONS, PROJECT_ROOT, preload_modules, project_first_on_path

__all__ = ["PRELOAD_BESIDE_DEFINITIONS", "PROJECT_ROOT", "forkserver_executor", "project_first_on_path"]


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
        start["forkserver"] = {"preload_modules": preload_modules(module)}
    config["start_method"] = start
    return dg.multiprocess_executor.executor_creation_fn(init_context._replace(executor_config=config))
