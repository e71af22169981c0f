"""The service's executor forks steps from a fork server, and a step (and the pool a step starts) imports this
checkout's modules even when the command's environment would find another copy of the project first."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.definitions import defs
from assets.executor import forkserver_executor, project_first_on_path
from tests.paths import ROOT

PACKAGES = ("assets", "analytics", "etl", "expectations", "report", "federation", "deploy", "synthetic")


def test_jobs_without_an_executor_of_their_own_fork_steps_from_a_fork_server():
    job = defs.resolve_implicit_global_asset_job_def()  # what `asset materialize --select '*'` runs
    assert job.executor_def.name == "multiprocess_forkserver"
    assert defs.resolve_job_def("study_job").executor_def.name == "multiprocess_forkserver"


@dg.op
def _nothing() -> None:
    pass


@dg.job
def _a_job() -> None:
    _nothing()


@pytest.fixture
def path_restored(monkeypatch):
    """The executor puts the checkout first on sys.path and PYTHONPATH; not for the rest of the session."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    if "PYTHONPATH" in os.environ:
        monkeypatch.setenv("PYTHONPATH", os.environ["PYTHONPATH"])
    else:
        monkeypatch.delenv("PYTHONPATH", raising=False)


def _executor(config: dict):
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.InitExecutorContext(job=dg.reconstructable(_a_job), executor_def=forkserver_executor,
                                         executor_config={"retries": {"enabled": {}}, **config}, instance=instance)
        return forkserver_executor.executor_creation_fn(context)


def test_steps_fork_from_a_server_that_preloaded_the_jobs_module_and_what_steps_import_lazily(path_restored):
    executor = _executor({})
    assert executor._start_method == "forkserver"
    assert executor._explicit_forkserver_preload == [__name__, "great_expectations", "analytics.comparisons",
                                                     "analytics.summaries", "analytics.figures", "report.render"]


def test_the_definitions_import_none_of_what_only_steps_need():
    """`dagster` commands load the definitions; SciPy, statsmodels, matplotlib, Jinja and Great Expectations are
    the steps' (preloaded by the fork server): a fresh interpreter shows what importing the definitions pulls in."""
    heavy = ("scipy", "statsmodels", "matplotlib", "jinja2", "great_expectations")
    code = f"import sys, assets.definitions; print([m for m in {heavy!r} if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FEDERATION_EXCHANGE", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_modules_whose_fork_server_the_command_starts_early_use_the_forkserver_executor():
    """deploy/dagster_cli.py starts the fork server of these locations before loading them; the executor then
    reuses it, so it must be the executor these locations' jobs run on."""
    import importlib

    from assets.forkserver import EARLY_MODULES

    for module in EARLY_MODULES:
        location = importlib.import_module(module).defs
        assert location.resolve_implicit_global_asset_job_def().executor_def is forkserver_executor


def test_a_fork_server_started_early_is_the_one_steps_fork_from(tmp_path):
    """What the command does before it loads the definitions: start the fork server with the executor's preload
    and the .env dagster will load; a process started later from this one forks from that server, with the
    preloaded modules already imported and the .env's variables set."""
    code = (
        "import multiprocessing as mp, multiprocessing.forkserver as fs, os, sys\n"
        "from assets.forkserver import preload_modules, start_early\n"
        "def probe():\n"
        "    return all(m in sys.modules for m in preload_modules('assets.definitions')), os.environ.get('FROM_DOTENV')\n"
        "if __name__ == '__main__':\n"
        "    start_early('assets.definitions', {'FROM_DOTENV': 'yes'})\n"
        "    address = fs._forkserver._forkserver_address\n"
        "    assert os.environ.get('FROM_DOTENV') is None  # only the fork server's environment has it\n"
        "    with mp.get_context('forkserver').Pool(1) as pool:\n"
        "        print(pool.apply(probe), fs._forkserver._forkserver_address == address)\n"
    )
    script = tmp_path / "probe_early.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=True, timeout=300)
    assert done.stdout.strip() == "(True, 'yes') True"  # every module preloaded (the fork server skips a failing one)


def test_the_run_config_may_still_choose_spawn_or_its_own_preload(path_restored):
    assert _executor({"start_method": {"spawn": {}}})._start_method == "spawn"
    own = _executor({"start_method": {"forkserver": {"preload_modules": ["dagster"]}}})
    assert (own._start_method, own._explicit_forkserver_preload) == ("forkserver", ["dagster"])


def test_the_checkout_goes_first_on_sys_path_and_pythonpath_once(monkeypatch):
    monkeypatch.setattr(sys, "path", ["/venv/bin", "/checkout", "/site-packages"])
    monkeypatch.setenv("PYTHONPATH", "/elsewhere:/checkout")
    project_first_on_path("/checkout")
    project_first_on_path("/checkout")
    assert sys.path == ["/checkout", "/venv/bin", "/site-packages"]
    assert os.environ["PYTHONPATH"] == os.pathsep.join(["/checkout", "/elsewhere"])


def test_a_step_and_its_pool_workers_import_this_checkout_not_another_copy(tmp_path):
    """Another copy of the project comes first on the command's path (as an editable install from another
    checkout does); the step and a worker of the cohort step's pool still import the code location's modules."""
    other = tmp_path / "other_copy"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests" / "assets" / "probe", other / "tests" / "assets" / "probe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for init in ("tests/__init__.py", "tests/assets/__init__.py"):
        (other / init).touch()
    home = tmp_path / "dagster_home"
    home.mkdir()
    out = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": str(other), "DAGSTER_HOME": str(home), "PROBE_OUT": str(out)}
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "asset", "materialize", "-m", "tests.assets.probe.definitions", "-d", str(ROOT),
                           "--select", "*"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen["worker"]["pid"] != seen["step"]["pid"]
    for process in ("step", "worker"):
        assert seen[process]["cohort_source"] == str(ROOT / "assets" / "study" / "cohort_source.py")
        assert seen[process]["tables"] == str(ROOT / "analytics" / "cohort" / "tables.py")
    # the step was started the executor's way (multiprocessing passes the start method on to the process)
    assert seen["step"]["start_method"] == "forkserver"
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        run = instance.get_runs(limit=1)[0]
        assert run.is_success
    finally:
        instance.dispose()
