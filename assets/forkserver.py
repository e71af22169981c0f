"""The fork server the service's steps are forked from: what it preloads, the path it and its children import
from, and starting it early. No Dagster here, so the project's ``dagster`` command can start the fork server
before it imports anything heavy itself (deploy/dagster_cli.py).

Why early: ``dagster asset materialize`` imports the definitions (about 9 CPU s), builds the run, and only then
does the multiprocess executor start its fork server, which imports the definitions again and Great
Expectations (about 14 CPU s) before it can fork the first step. The two imports ran one after the other on a
2-core machine. Started by the command before it loads the code location, the fork server imports while the
command does: the executor then finds it running (``multiprocessing``'s fork server is one per process, and a
running one is reused whatever preload is asked for later), so the preload here must be the executor's.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import sys
from pathlib import Path

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)

# Imported by the fork server beside the code location's module: every step's checks import Great Expectations
# (expectations/runner.py imports it lazily, 5 CPU s), and the statistics, figures and report import SciPy,
# statsmodels, matplotlib and Jinja lazily (the definitions do not, so the command stays light): the fork
# server imports them once for all steps.
PRELOAD_BESIDE_DEFINITIONS = ("great_expectations", "analytics.comparisons", "analytics.summaries",
                              "analytics.figures", "report.render")
# The code locations whose jobs run on the forkserver executor (assets/executor.py), so whose fork server the
# command may start before loading them (tests/assets/test_executor.py checks each one's executor).
EARLY_MODULES = ("assets.definitions",)
# Dagster's multiprocess executor puts this first in any forkserver preload (dagster/_core/executor/multiprocess.py).
DAGSTER_FIRST = "dagster._core.executor.multiprocess"


def project_first_on_path(root: str = PROJECT_ROOT) -> None:
    """This checkout first on sys.path and PYTHONPATH, for every process started from this one."""
    sys.path[:] = [root, *(p for p in sys.path if p != root)]
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *rest])


def preload_modules(module: str) -> list[str]:
    """What the executor asks the fork server to import for a job defined in ``module``."""
    return [module, *PRELOAD_BESIDE_DEFINITIONS]


def start_early(module: str, env_overlay: dict[str, str] | None = None) -> None:
    """Start the fork server now, preloading what the executor would ask for ``module``, without waiting for it
    to finish importing (the first fork waits). ``env_overlay``: variables the command will have set by the
    time its steps run (Dagster's CLI loads the working directory's .env); the fork server's environment is
    fixed when it starts, and every step inherits it."""
    project_first_on_path()
    saved = {key: os.environ.get(key) for key in (env_overlay or {})}
    os.environ.update(env_overlay or {})
    try:
        multiprocessing.get_context("forkserver").set_forkserver_preload([DAGSTER_FIRST, *preload_modules(module)])
        multiprocessing.forkserver.ensure_running()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
