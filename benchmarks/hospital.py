"""The whole hospital, end to end, as an operator runs it: generate, then ``dagster asset materialize``.

For each size, a synthetic hospital is generated *streamed* (``stream_hospital``: NDJSON written patient by
patient, so generating needs the memory of one patient) and handed over as an NDJSON export; then the
operators' command ``dagster asset materialize -w workspace.yaml --select '*'`` runs from the project root
with ``FHIR_SYNC_MODE=ndjson`` into a fresh SQLite warehouse and a fresh Dagster instance. Printed per stage
(Dagster step, timed from the run's event log): wall time, CPU time and peak RSS of the step's process, and
the rows of the tables it materialised; then every process's peak RSS (VmHWM, sampled from /proc: the CLI
and all its descendants), and the cohort against the generator's truth, patient by patient via patient_xref.

    .venv/bin/python -m benchmarks.hospital                      # the paper-size hospital and 10,000 patients
    .venv/bin/python -m benchmarks.hospital --patients 40000     # larger sizes: opt in (200000: 6 + 18 min)

Sizes other than the paper's scale every count of the paper hospital (``HospitalParams()``, 474 patients) by the
same factor, so the mix of cohort, exclusions, prospective and unrelated patients stays the paper's.
Targets (issue 16) are printed beside the figures; nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import orjson

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PAPER = "paper"
TICK = os.sysconf("SC_CLK_TCK")
# Issue 16's targets, printed beside the measured figures.
TARGET_PAPER_WALL_S = 60.0
SMALL_MB = 50  # processes below this are summed into one line
TARGET_PEAK_RSS_MB = {40_000: 1536.0, 200_000: 4096.0}


# -- the hospital ------------------------------------------------------------------------------------

def hospital_params(size: str) -> Any:
    """The demo's hospital for ``paper``; else the paper hospital's counts scaled to about ``size`` patients."""
    from synthetic.hospital import RETRO_ATTRITION_REASONS, HospitalParams

    paper = HospitalParams()
    if size == PAPER:
        return paper
    n_reasons = len(RETRO_ATTRITION_REASONS) - 1  # no_iim_condition comes from the unrelated patients
    paper_n = paper.n_retrospective + paper.n_prospective_enrolled + paper.n_noise + n_reasons * paper.attrition_per_reason
    factor = int(size) / paper_n
    retro, prospective = round(paper.n_retrospective * factor), round(paper.n_prospective_enrolled * factor)
    attrition = max(1, round(paper.attrition_per_reason * factor))
    noise = max(0, int(size) - retro - prospective - n_reasons * attrition)
    return replace(paper, n_retrospective=retro, n_prospective_enrolled=prospective, attrition_per_reason=attrition,
                   n_noise=noise)


def patients_in(params: Any) -> int:
    from synthetic.hospital import RETRO_ATTRITION_REASONS

    return (params.n_retrospective + params.n_prospective_enrolled + params.n_noise
            + (len(RETRO_ATTRITION_REASONS) - 1) * params.attrition_per_reason)


def _generate(params: Any, ndjson_dir: str, truth_path: str) -> dict[str, Any]:
    """In a process of its own, so that its peak RSS is the generator's alone."""
    from synthetic.hospital import stream_hospital
    from synthetic.load import write_ndjson_stream

    wall, cpu = time.perf_counter(), time.process_time()
    counts = write_ndjson_stream(stream_hospital(params), Path(ndjson_dir), Path(truth_path))
    return {"counts": counts, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "peak_rss_mb": _status_kb(os.getpid(), "VmHWM") / 1024}


def generate(params: Any, ndjson_dir: Path, truth_path: Path) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_generate, params, str(ndjson_dir), str(truth_path)).result()


# -- watching the CLI's processes ----------------------------------------------------------------------

def _status_kb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds so far) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class Process:
    pid: int
    parent: int
    command: str
    first_seen: float
    last_seen: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0     # VmHWM, the kernel's own high-water mark
    samples: list[tuple[float, float]] = field(default_factory=list)  # (time, VmRSS MB)


class ProcessWatcher(threading.Thread):
    """Samples the CLI and all its descendants every ``interval_s``: VmHWM is the kernel's high-water mark, so
    a process's peak is exact as long as it lives through one sample; its CPU time is the last one read."""

    def __init__(self, root: int, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.interval_s = root, interval_s
        self.processes: dict[int, Process] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(int(entry))) is not None:
                parents[int(entry)], cpu[int(entry)] = stat
        tree, frontier = {self.root}, [self.root]
        children: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        now = time.time()
        for pid in tree & parents.keys():
            hwm, rss = _status_kb(pid, "VmHWM") / 1024, _status_kb(pid, "VmRSS") / 1024
            if hwm == 0.0:
                continue
            proc = self.processes.get(pid)
            if proc is None:
                proc = self.processes[pid] = Process(pid, parents[pid], _command(pid), now)
            proc.last_seen, proc.cpu_s, proc.peak_rss_mb = now, cpu[pid], max(proc.peak_rss_mb, hwm)
            proc.samples.append((now, rss))


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    step = re.search(r'step_keys_to_execute"?\s*:\s*\[\s*"([^"]+)"', text)
    if step:
        return f"step {step.group(1)}"
    return text[:120]


# -- the operator's command ---------------------------------------------------------------------------

def materialize(workdir: Path, ndjson_dir: Path) -> dict[str, Any]:
    from synthetic.demo import dagster_home

    env = {**os.environ, "FHIR_SYNC_MODE": "ndjson", "FHIR_NDJSON_DIR": str(ndjson_dir),
           "WAREHOUSE_URL": f"sqlite:///{workdir / 'warehouse.sqlite'}",
           "DAGSTER_HOME": str(dagster_home(workdir / "dagster_home")), "REPORTS_DIR": str(workdir / "reports"),
           "FIGURES_DIR": str(workdir / "figures"), "PSEUDONYM_KEY": secrets.token_hex(32),
           # the checkout's own packages, whichever project the venv was installed from
           "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    # The venv's `dagster` console script runs deploy.dagster_cli:main; run that module with this interpreter, so a
    # console script whose shebang names another (or a removed) venv cannot change what is measured.
    command = [sys.executable, "-m", "deploy.dagster_cli", "asset", "materialize", "-w", "workspace.yaml", "--select", "*"]
    log = workdir / "materialize.log"
    started, before = time.time(), os.times()
    with log.open("wb") as out:
        cli = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        watcher = ProcessWatcher(cli.pid)
        watcher.start()
        code = cli.wait()
        watcher.stop()
    wall = time.time() - started
    after = os.times()  # the CLI and every descendant it waited for (spawned steps, code servers)
    waited = after.children_user + after.children_system - before.children_user - before.children_system
    # Steps forked by a fork server are its children, and nobody waits for the fork server: their CPU is not in
    # os.times(), so every process is counted from the watcher's last sample (at most 0.2 s missing per process).
    sampled = sum(p.cpu_s for p in watcher.processes.values())
    return {"code": code, "wall_s": wall, "started": started, "log": log, "env": env, "processes": watcher.processes, "cli_pid": cli.pid,
            "children_cpu_s": sampled, "waited_cpu_s": waited}


# -- what the run did, from the Dagster instance and the warehouse -------------------------------------

@dataclass
class Step:
    key: str
    start: float
    end: float
    status: str
    pid: int | None = None     # the process that ran the step (each step is one with the multiprocess executor)
    tables: list[str] = field(default_factory=list)
    materialized: float | None = None  # when its last asset was materialized (what follows is its blocking checks)
    retried: bool = False      # it failed once and ran again: its times hold the failed attempt and the wait


def steps_of_last_run(dagster_home_dir: Path) -> list[Step]:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home_dir))
    try:
        run = instance.get_runs(limit=1)[0]
        kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
                 dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.STEP_UP_FOR_RETRY}
        steps: dict[str, Step] = {}
        for record in instance.all_logs(run.run_id, of_type=kinds):
            event, key = record.dagster_event, record.step_key
            if event is None or key is None:
                continue
            step = steps.setdefault(key, Step(key, record.timestamp, record.timestamp, "running"))
            if event.event_type == dg.DagsterEventType.STEP_START:
                step.start, step.pid = record.timestamp, event.pid
            elif event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY:
                step.retried = True
            elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                step.tables.append(event.asset_key.path[-1])
                step.materialized = record.timestamp
            else:
                step.end, step.status = record.timestamp, event.event_type.value.removeprefix("STEP_").lower()
        return sorted(steps.values(), key=lambda s: s.start)
    finally:
        instance.dispose()


def table_rows(warehouse_url: str) -> dict[str, int]:
    import sqlalchemy as sa

    engine = sa.create_engine(warehouse_url)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return {n: int(conn.execute(sa.text(f'SELECT COUNT(*) FROM "{n}"')).scalar_one()) for n in names}  # noqa: S608 - names from the inspector
    finally:
        engine.dispose()


def cohort_agreement(warehouse_url: str, truth_path: Path) -> dict[str, int]:
    """The cohort table against the generator's plan: who is in it and in which group, patient by patient."""
    import sqlalchemy as sa

    planned: dict[str, str] = {}
    with truth_path.open("rb") as f:
        for line in f:
            row = orjson.loads(line)
            if row["retro_reason"] is None:
                planned[row["fhir_patient_id"]] = row["group"]
    engine = sa.create_engine(warehouse_url)
    try:
        with engine.connect() as conn:
            got = dict(conn.execute(sa.text('SELECT x.fhir_patient_id, c."group" FROM cohort c '
                                            "JOIN patient_xref x ON x.patient_key = c.patient_key")).all())
    finally:
        engine.dispose()
    both = planned.keys() & got.keys()
    return {"truth": len(planned), "cohort": len(got), "missing": len(planned.keys() - got.keys()),
            "extra": len(got.keys() - planned.keys()), "wrong_group": sum(planned[p] != got[p] for p in both)}


# -- the figures ----------------------------------------------------------------------------------------

def _step_process(step: Step, processes: dict[int, Process], cli: int) -> Process | None:
    """The step's own process, unless it ran in the CLI's process (an in-process executor) or was never sampled."""
    proc = processes.get(step.pid) if step.pid is not None else None
    return proc if proc is not None and proc.pid != cli else None


def _window_peak(step: Step, processes: dict[int, Process]) -> float:
    """With no process of its own (an in-process executor), the largest RSS any process had during the step."""
    return max((rss for p in processes.values() for t, rss in p.samples if step.start <= t <= step.end), default=0.0)


def _role(p: Process, roles: dict[int, str], cli: int) -> str:
    if p.pid == cli:
        return "dagster CLI (run coordinator)"
    if p.pid in roles:
        return roles[p.pid]
    if p.parent in roles:
        return f"{p.command.split()[0].rsplit('/', 1)[-1]}, child of {roles[p.parent]}"
    return p.command


def report(size: str, params: Any, generated: dict[str, Any], run: dict[str, Any], steps: list[Step],
           rows: dict[str, int], agreement: dict[str, int] | None) -> list[str]:
    n_patients = patients_in(params)
    resources = sum(generated["counts"].values())
    lines = [f"== hospital {size}: {n_patients} patients, {resources} resources ==",
             f"generate (streamed NDJSON): {generated['wall_s']:.1f} s wall, {generated['cpu_s']:.1f} s CPU, "
             f"peak RSS {generated['peak_rss_mb']:.0f} MB",
             f"{'stage (Dagster step)':<24} {'status':>8} {'start s':>7} {'wall s':>7} {'process s':>9} {'CPU s':>7} "
             f"{'peak RSS MB':>11}  rows written"]
    for step in steps:
        proc = _step_process(step, run["processes"], run["cli_pid"])
        cpu = f"{proc.cpu_s:.1f}" if proc else "-"
        peak = proc.peak_rss_mb if proc else _window_peak(step, run["processes"])
        written = ", ".join(f"{t} {rows[t]}" for t in sorted(set(step.tables)) if t in rows)
        alive = f"{proc.last_seen - proc.first_seen:.1f}" if proc else "-"  # the step's process from spawn to exit
        begun = step.start - run["started"]  # since the command started (before the first: its start, the fork server's imports)
        lines.append(f"{step.key:<24} {step.status:>8} {begun:>7.1f} {step.end - step.start:>7.1f} {alive:>9} {cpu:>7} "
                     f"{peak:>11.0f}  {written}")
    peak_all = max((p.peak_rss_mb for p in run["processes"].values()), default=0.0)
    target = ""
    if size == PAPER:
        target = f"  (target <= {TARGET_PAPER_WALL_S:.0f} s wall)"
    elif int(size) in TARGET_PEAK_RSS_MB:
        target = f"  (target peak RSS <= {TARGET_PEAK_RSS_MB[int(size)]:.0f} MB)"
    lines.append(f"materialize --select '*': exit {run['code']}, {run['wall_s']:.1f} s wall, "
                 f"{run['children_cpu_s']:.1f} s CPU (all processes; {run['waited_cpu_s']:.1f} s in those the CLI reaped), "
                 f"peak RSS of any process {peak_all:.0f} MB{target}")
    roles = {s.pid: f"step {s.key}" for s in steps if s.pid is not None}
    lines.append(f"{'process (every one at or above ' + str(SMALL_MB) + ' MB)':<60} {'pid':>8} {'alive s':>8} {'CPU s':>8} {'VmHWM MB':>9}")
    small = [p for p in run["processes"].values() if p.peak_rss_mb < SMALL_MB]
    for p in sorted(run["processes"].values(), key=lambda p: p.first_seen):
        if p.peak_rss_mb >= SMALL_MB:
            role = _role(p, roles, run["cli_pid"])  # not the smallest pid: pids wrap around
            lines.append(f"{role[:60]:<60} {p.pid:>8} {p.last_seen - p.first_seen:>8.1f} {p.cpu_s:>8.1f} {p.peak_rss_mb:>9.0f}")
    if small:
        lines.append(f"{f'{len(small)} smaller processes (log tailers, resource trackers)':<60} {'':>8} {'':>8} "
                     f"{sum(p.cpu_s for p in small):>8.1f} {max(p.peak_rss_mb for p in small):>9.0f}")
    if agreement is not None:
        ok = agreement["missing"] == agreement["extra"] == agreement["wrong_group"] == 0
        lines.append(f"cohort vs generator's truth: {agreement['cohort']} of {agreement['truth']} planned, "
                     f"{agreement['missing']} missing, {agreement['extra']} extra, {agreement['wrong_group']} in the wrong group"
                     f" -> {'equal' if ok else 'DIFFERENT'}")
    return lines


def run_size(size: str, root: Path) -> list[str]:
    params = hospital_params(size)
    workdir = root / f"hospital-{size}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ndjson_dir, truth_path = workdir / "ndjson", workdir / "truth.ndjson"
    print(f"generating hospital {size} into {workdir} ...", flush=True)
    generated = generate(params, ndjson_dir, truth_path)
    print(f"materializing ({sum(generated['counts'].values())} resources) ...", flush=True)
    run = materialize(workdir, ndjson_dir)
    if run["code"] != 0:
        print(run["log"].read_text()[-3000:])
    url = run["env"]["WAREHOUSE_URL"]
    rows = table_rows(url)
    agreement = cohort_agreement(url, truth_path) if "cohort" in rows and "patient_xref" in rows else None
    lines = report(size, params, generated, run, steps_of_last_run(Path(run["env"]["DAGSTER_HOME"])), rows, agreement)
    print("\n".join(lines), flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, nargs="*", default=None,
                        help="hospital sizes in patients (default: 10000; 40000 and 200000 are opt-in)")
    parser.add_argument("--paper", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the paper-size (demo) hospital; on by default when --patients is not given")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where hospitals, warehouses and Dagster instances go (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    sizes = ([PAPER] if (args.paper if args.paper is not None else args.patients is None) else [])
    sizes += [str(n) for n in (args.patients if args.patients is not None else [10_000])]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="hospital-bench-"))
    try:
        for size in sizes:
            run_size(size, root)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
