"""Ingestion speed and memory: the ``fhir_ingest`` step as operators run it, beside two ceilings from the same run.

Run with `.venv/bin/python -m benchmarks.ingest` (250,000 generated resources; `--million` adds 1,000,000,
which takes about ten minutes more on two cores; `--no-rest` skips the REST and Bulk rows).

* The headline: ``dagster asset materialize -w workspace.yaml --select <the raw assets>`` with
  FHIR_SYNC_MODE=ndjson, FHIR_NDJSON_DIR, WAREHOUSE_URL and a fresh DAGSTER_HOME, timed as Dagster reports
  the step (its blocking checks included, and split into load and checks from the log). Peak memory (PSS) of
  the whole command's process tree, validation workers included, while it loads and while it checks.
* Ceilings, measured in the same run on the same files: the parse floor (``orjson.loads`` of every line)
  and a bare loader (parse + the same current and history raw-row writes into the same kind of fresh
  database, no validation, no bookkeeping; ``executemany`` in WAL mode on SQLite, COPY on PostgreSQL).
* fhiry (a popular NDJSON-to-pandas library) on a sample of the same files, when its own venv exists
  (`make bench-venv`; it needs pandas 3, which lifelines does not support).
* With ``--postgres-url``: the same step and bare loader into fresh databases on that server.
* REST against the sandbox server: end-to-end resources/s beside a bare client that only pages through the
  same searches, then an unchanged re-run's requests and writes, then a Bulk $export of the same server.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import orjson

ROOT = Path(__file__).resolve().parent.parent
FHIRY_PYTHON = ROOT / "benchmarks" / ".fhiry-venv" / "bin" / "python"
TYPES = ["Patient", "Condition", "MedicationStatement", "Procedure", "Observation", "AdverseEvent",
         "ResearchStudy", "ResearchSubject"]
BARE_BATCH = 2000  # rows per transaction, as the step's loader writes them


# ---------------------------------------------------------------- data

def _relabel(node: Any, suffix: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "id" and isinstance(value, str) and "resourceType" in node:
                out[key] = value + suffix
            elif key == "reference" and isinstance(value, str) and "/" in value and not value.startswith("ResearchStudy/"):
                out[key] = value + suffix
            else:
                out[key] = _relabel(value, suffix)
        return out
    if isinstance(node, list):
        return [_relabel(item, suffix) for item in node]
    return node


def scaled_hospital(n: int) -> Iterator[dict[str, Any]]:
    """About ``n`` resources: copies of the synthetic hospital with every id and reference relabelled."""
    from synthetic.hospital import HospitalParams, generate_hospital

    base = [r for r in generate_hospital(HospitalParams()).resources if r["resourceType"] != "ResearchStudy"]
    study = next(r for r in generate_hospital(HospitalParams()).resources if r["resourceType"] == "ResearchStudy")
    yield study
    produced = 1
    for copy in range(math.ceil(n / len(base))):
        for r in base:
            if produced >= n:
                return
            yield _relabel(r, f"-c{copy}")
            produced += 1


def write_files(n: int, directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    handles = {t: (directory / f"{t}.ndjson").open("wb") for t in TYPES}
    count = 0
    for r in scaled_hospital(n):
        handles[r["resourceType"]].write(orjson.dumps(r) + b"\n")
        count += 1
    for h in handles.values():
        h.close()
    return count


# ---------------------------------------------------------------- ceilings

def ndjson_lines(directory: Path) -> Iterator[tuple[str, int, bytes]]:
    """(file, line number, text) of every non-empty line, in the order the step reads the files."""
    for path in sorted(directory.glob("*.ndjson")):
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield str(path), number, line.rstrip(b"\n")


def parse_floor(directory: Path) -> dict[str, float]:
    """``orjson.loads`` of every line, one process: nothing that reads JSON can be faster."""
    started = time.perf_counter()
    n = sum(1 for _, _, text in ndjson_lines(directory) if orjson.loads(text) is not None)
    return {"received": n, "seconds": time.perf_counter() - started}


def bare_loader(directory: Path, url: str, batch: int = BARE_BATCH) -> dict[str, float]:
    """The yardstick the step is held to: parse every line, then write the same current and history raw rows
    into the same kind of fresh database (the warehouse's own tables and connection settings: SQLite in WAL
    mode, or COPY on PostgreSQL), ``batch`` rows per transaction with executemany. No validation, no
    plausibility, no bookkeeping, no lookups of stored versions. The content hash column is filled with the
    SHA-256 of the line as received (the step hashes the canonical JSON)."""
    import hashlib

    from etl.warehouse import Warehouse
    from etl.warehouse.schema import HISTORY, HISTORY_COLUMNS, RAW_COLUMNS
    from etl.warehouse.writes import driver_time

    wh = Warehouse(url)
    wh.ensure_schema(TYPES)
    stamp = driver_time(wh.engine, datetime.now(timezone.utc))
    history = wh.table(HISTORY)
    started = time.perf_counter()
    n = 0
    current: dict[str, list[tuple]] = {}
    versions: list[tuple] = []

    def write() -> None:
        with wh.engine.begin() as conn:
            for rtype, rows in current.items():
                if rows:
                    wh.insert_rows(conn, wh.tables.raw(rtype), RAW_COLUMNS, rows)
            wh.insert_rows(conn, history, HISTORY_COLUMNS, versions, ignore_conflicts=True)
        current.clear()
        versions.clear()

    for path, number, text in ndjson_lines(directory):
        r = orjson.loads(text)
        meta = r.get("meta") or {}
        rtype, rid, vid, lu, source = r["resourceType"], r["id"], meta.get("versionId"), meta.get("lastUpdated"), f"{path}:{number}"
        body = text.decode()
        current.setdefault(rtype, []).append((rid, vid, lu, hashlib.sha256(text).hexdigest(), body, source, stamp))
        versions.append((rtype, rid, vid or lu or "-", vid, lu, False, body, source, stamp))
        n += 1
        if len(versions) >= batch:
            write()
    write()
    seconds = time.perf_counter() - started
    wh.engine.dispose()
    return {"received": n, "seconds": seconds}


# ---------------------------------------------------------------- the step, as operators run it

def _tree_memory_mb(root: int) -> float:
    """Proportional set size (PSS) of ``root`` and all its descendants (the CLI, the step's process and its validation
    workers). PSS, not RSS: forked workers share their parent's pages, and a sum of RSS counts those once per process."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    total_kb, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # gone since the listing
            rollup = ""
        total_kb += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
        stack.extend(children.get(pid, []))
    return total_kb / 1024


def operator_step(directory: Path, url: str, workdir: Path, log: Path) -> dict[str, float]:
    """``dagster asset materialize -w workspace.yaml --select <the raw assets>`` with FHIR_SYNC_MODE=ndjson and a
    fresh DAGSTER_HOME, as an operator runs it. Times the ``fhir_ingest`` step as Dagster reports it (its
    blocking checks included) and the whole command; samples the peak resident memory of the command's
    process tree (the step's process plus its validation workers) every 0.2 s."""
    from benchmarks.hospital import steps_of_last_run
    from etl.warehouse import raw_table_name
    from synthetic.demo import dagster_home

    home = dagster_home(workdir / f"dagster-home-{time.monotonic_ns()}")
    env = {**os.environ, "FHIR_SYNC_MODE": "ndjson", "FHIR_NDJSON_DIR": str(directory), "WAREHOUSE_URL": url,
           "DAGSTER_HOME": str(home), "PSEUDONYM_KEY": os.environ.get("PSEUDONYM_KEY") or "0" * 64}
    selection = ",".join(raw_table_name(t) for t in TYPES)
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-w", "workspace.yaml",
               "--select", selection]
    peak = {"load": 0.0, "checks": 0.0}
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            # Until every raw asset is materialized the step is loading; after that it runs its checks.
            phase = "checks" if log.read_text().count("ASSET_MATERIALIZATION - ") >= len(TYPES) else "load"
            peak[phase] = max(peak[phase], _tree_memory_mb(process.pid))
            time.sleep(0.2)
    wall = time.perf_counter() - started
    text = log.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"dagster asset materialize failed (exit {process.returncode}); log in {log}:\n{text[-3000:]}")
    # The step's events as Dagster stored them (sub-second timestamps): it loads until its last raw asset is
    # materialized, then runs its blocking checks. (Parsing the printed log lost the split twice: whole seconds,
    # and a line another process's output had broken.)
    step = next(s for s in steps_of_last_run(home) if s.key == "fhir_ingest")
    if step.retried:  # its times would hold the failed attempt and the wait before the retry
        raise RuntimeError(f"the fhir_ingest step failed once and was retried; not a measurement. Log in {log}")
    seconds = step.end - step.start
    load = (step.materialized - step.start) if step.materialized is not None else float("nan")
    checks = (step.end - step.materialized) if step.materialized is not None else float("nan")
    from etl.warehouse import Warehouse

    wh = Warehouse(url)
    loaded = sum(wh.current_count(t) for t in TYPES)
    wh.engine.dispose()
    return {"seconds": seconds, "wall": wall, "checks": checks, "load": load, "loaded": loaded, "peak_rss_mb": peak["load"],
            "peak_rss_checks_mb": peak["checks"]}


def fhiry_rate(directory: Path, sample: int) -> float | None:
    if not FHIRY_PYTHON.exists():
        return None
    sample_dir = directory.parent / "fhiry-sample"
    sample_dir.mkdir(exist_ok=True)
    with (sample_dir / "sample.ndjson").open("wb") as out, (directory / "Observation.ndjson").open("rb") as obs, \
            (directory / "MedicationStatement.ndjson").open("rb") as med:
        for line in islice(obs, sample // 2):
            out.write(line)
        for line in islice(med, sample - sample // 2):
            out.write(line)
    code = ("import time,sys; from fhiry.fhirndjson import Fhirndjson; f=Fhirndjson(); f.folder=sys.argv[1]; "
            "t=time.perf_counter(); f.process_source(); print(len(f.df), time.perf_counter()-t)")
    out = subprocess.run([str(FHIRY_PYTHON), "-c", code, str(sample_dir)], capture_output=True, text=True, check=True)
    rows, seconds = out.stdout.split()[-2:]
    return int(rows) / float(seconds)


# ---------------------------------------------------------------- REST

def bulk_export_rate(client: Any, db: Path) -> float:
    """A system-level Bulk $export of the same server, downloaded and loaded (kick-off and polling included)."""
    from etl.ingest.bulk import BulkExportClient, sync_bulk
    from etl.warehouse import Warehouse

    started = time.perf_counter()
    _, reports = sync_bulk(client, Warehouse(f"sqlite:///{db}"), TYPES,
                           exporter=BulkExportClient(client, initial_poll_s=0.2, poll_cap_s=1.0))
    return sum(r.load.received for r in reports.values()) / (time.perf_counter() - started)


def rest_path(n: int, workdir: Path, page_size: int) -> dict[str, float]:
    from etl.fhir.client import FhirClient, SearchStats
    from etl.ingest.rest import sync_rest
    from etl.warehouse import Warehouse
    from synthetic.load import load_server
    from synthetic.sandbox import SandboxFhirServer

    with SandboxFhirServer(workdir / "server") as server:
        load_server(server.base_url, list(scaled_hospital(n)), batch_size=1000)
        with FhirClient(server.base_url, page_size=page_size) as client:
            started = time.perf_counter()
            paged = sum(1 for t in TYPES for _ in client.search(t, {"_sort": "_lastUpdated"}, stats=SearchStats()))
            bare = paged / (time.perf_counter() - started)
            wh = Warehouse(f"sqlite:///{workdir / 'rest.sqlite'}")
            started = time.perf_counter()
            reports = sync_rest(client, wh, TYPES)
            seconds = time.perf_counter() - started
            received = sum(r.load.received for r in reports.values())
            again = sync_rest(client, wh, TYPES)
            bulk_rate = bulk_export_rate(client, workdir / "bulk.sqlite")
    return {"resources": received, "bare_per_s": bare, "e2e_per_s": received / seconds, "bulk_per_s": bulk_rate,
            "rerun_requests": sum(r.search.requests for r in again.values()),
            "rerun_writes": sum(r.load.applied.writes for r in again.values())}


def _rate(figures: dict[str, float], key: str = "received") -> float:
    return figures[key] / figures["seconds"]


def ndjson_rows(n: int, work: Path, postgres_url: str | None) -> list[tuple[str, int, dict, dict, dict]]:
    """One generated hospital of about ``n`` resources: the parse floor, the bare loader and the operator's step,
    in that order, each into a fresh database (SQLite, then PostgreSQL when asked)."""
    files = work / f"ndjson-{n}"
    t0 = time.perf_counter()
    written = write_files(n, files)
    size = sum(p.stat().st_size for p in files.glob("*.ndjson")) / 1e6
    print(f"generated {written} resources in {time.perf_counter() - t0:.0f}s ({size:.0f} MB of NDJSON)", flush=True)
    floor = parse_floor(files)
    out = []
    targets = [("SQLite", lambda name: nullcontext(f"sqlite:///{work / f'{name}-{n}.sqlite'}"))]
    if postgres_url:
        from synthetic.scratch_postgres import scratch_database

        targets.append(("PostgreSQL", lambda name: scratch_database(postgres_url, f"ingest_{name}")))
    for label, database in targets:
        with database("bare") as url:
            bare = bare_loader(files, url)
        with database("step") as url:
            step = operator_step(files, url, work, work / f"step-{label}-{n}.log")
        if step["loaded"] != written:
            raise RuntimeError(f"the step loaded {step['loaded']} of {written} resources (log in {work})")
        print(f"  {label}: parse floor {_rate(floor):.0f} res/s, bare loader {_rate(bare):.0f} res/s, "
              f"step {written / step['seconds']:.0f} res/s", flush=True)
        out.append((label, written, floor, bare, step))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=250_000)
    parser.add_argument("--million", action="store_true", help="also 1,000,000 resources (about 10 minutes more)")
    parser.add_argument("--rest-resources", type=int, default=100_000)
    parser.add_argument("--no-rest", action="store_true", help="skip the REST and Bulk rows")
    parser.add_argument("--fhiry-sample", type=int, default=5_000)
    parser.add_argument("--keep", action="store_true", help="keep the generated files, databases and logs")
    parser.add_argument("--postgres-url", help="also load into fresh databases on this PostgreSQL server "
                                               "(an SQLAlchemy URL, postgresql+psycopg://...)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        print(f"cores: {os.cpu_count()}; work directory {work}")
        rows = []
        for n in (args.resources, *([1_000_000] if args.million else [])):
            rows.extend(ndjson_rows(n, work, args.postgres_url))
        print()
        print("NDJSON hand-over: the fhir_ingest step (dagster asset materialize, FHIR_SYNC_MODE=ndjson) beside its ceilings")
        print(f"{'database':<11} {'resources':>10} {'parse floor':>12} {'bare loader':>12} {'step res/s':>11} "
              f"{'step/bare':>10} {'load/bare':>10} {'step s':>7} {'load s':>7} {'checks s':>9} {'command s':>10} "
              f"{'PSS load MB':>12} {'PSS checks MB':>14}")
        for label, written, floor, bare, step in rows:
            rate = written / step["seconds"]
            print(f"{label:<11} {written:>10} {_rate(floor):>12.0f} {_rate(bare):>12.0f} {rate:>11.0f} "
                  f"{rate / _rate(bare):>10.2f} {bare['seconds'] / step['load']:>10.2f} {step['seconds']:>7.1f} "
                  f"{step['load']:>7.1f} {step['checks']:>9.1f} {step['wall']:>10.1f} "
                  f"{step['peak_rss_mb']:>12.0f} {step['peak_rss_checks_mb']:>14.0f}")
        print("(parse floor: orjson.loads of every line, one process. bare loader: parse + the same current and history")
        print(" raw rows into a fresh database of the same kind, no validation, one process. step: Dagster's own timing of")
        print(" fhir_ingest, its blocking checks included; load and checks: its two parts, from the timestamps of Dagster's")
        print(" event log (load: step start to the last raw asset materialized, so load/bare leaves the checks out);")
        print(" command: the whole CLI. PSS: the peak proportional set size of the command's process tree (the CLI, the")
        print(" step's process and its validation workers) while the step loads and while it checks, sampled every 0.2 s)")
        files = work / f"ndjson-{args.resources}"
        rate = fhiry_rate(files, args.fhiry_sample)
        if rate is None:
            print("fhiry: not measured (run `make bench-venv` to create benchmarks/.fhiry-venv)")
        else:
            print(f"fhiry 5.2.2 on {args.fhiry_sample} of the same resources: {rate:.0f} resources/s")
        if args.no_rest:
            return
        print()
        rest = rest_path(args.rest_resources, work, page_size=1000)
        print(f"REST path, sandbox server, {rest['resources']:.0f} resources, pages of 1000")
        print(f"  bare paging {rest['bare_per_s']:.0f} res/s, end-to-end {rest['e2e_per_s']:.0f} res/s, "
              f"ratio {rest['e2e_per_s'] / rest['bare_per_s']:.2f}")
        print(f"  unchanged re-run: {rest['rerun_requests']:.0f} requests for {len(TYPES)} types, "
              f"{rest['rerun_writes']:.0f} rows written")
        print(f"Bulk $export of the same server (kick-off, polling, download in blocks, load): "
              f"{rest['bulk_per_s']:.0f} res/s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
