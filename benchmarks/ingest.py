"""Ingestion speed and memory: the Bulk NDJSON path and the REST path, each beside its ceiling.

Prints its figures; run with `.venv/bin/python -m benchmarks.ingest` (about 1M resources,
several minutes) or `--resources 200000` for a quicker look.

* NDJSON path: end-to-end resources/s (read, validate, plausibility, load
  into SQLite) beside the ceiling, bare ``fhir.resources.R4B`` validation of the same lines on
  every core. Peak RSS at N/4 and N shows whether memory stays flat.
* fhiry (a popular NDJSON-to-pandas library) on a sample of the same files, when its own venv
  exists (`make bench-venv`; it needs pandas 3, which lifelines does not support).
* With ``--postgres-url``: the larger NDJSON set again, into a fresh database on that server.
* REST path against the sandbox server: end-to-end resources/s beside a bare client that only
  pages through the same searches, then an unchanged re-run's requests and writes, then a Bulk
  $export of the same server.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import orjson

ROOT = Path(__file__).resolve().parent.parent
FHIRY_PYTHON = ROOT / "benchmarks" / ".fhiry-venv" / "bin" / "python"
TYPES = ["Patient", "Condition", "MedicationStatement", "Procedure", "Observation", "AdverseEvent",
         "ResearchStudy", "ResearchSubject"]


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


# ---------------------------------------------------------------- ceiling

def _validate_chunk(lines: list[bytes]) -> int:
    from etl.fhir.validation import _model

    for line in lines:
        r = orjson.loads(line)
        _model(r["resourceType"]).model_validate(r)
    return len(lines)


def validation_ceiling(directory: Path, workers: int) -> float:
    def chunks() -> Iterator[list[bytes]]:
        for path in sorted(directory.glob("*.ndjson")):
            with path.open("rb") as f:
                while chunk := list(islice(f, 500)):
                    yield chunk

    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        total = sum(pool.map(_validate_chunk, chunks(), chunksize=1))
    return total / (time.perf_counter() - started)


# ---------------------------------------------------------------- end to end (child process)

def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). ``getrusage(RUSAGE_SELF).ru_maxrss`` is not: Linux carries
    the high-water mark over an exec, so a child started by a big parent reported the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _e2e_child(directory: str, url: str) -> None:
    from etl.ingest.ndjson_dir import sync_ndjson_directory
    from etl.warehouse import Warehouse

    started = time.perf_counter()
    reports = sync_ndjson_directory(Warehouse(url), directory, TYPES)
    seconds = time.perf_counter() - started
    received = sum(r.load.received for r in reports.values())
    print(json.dumps({"received": received, "seconds": seconds,
                      "quarantined": sum(r.load.quarantined_seen for r in reports.values()),
                      "rss_parent_mb": _peak_rss_mb(),
                      "rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def end_to_end(directory: Path, url: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.ingest", "--e2e-child", str(directory), url],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def postgres_end_to_end(directory: Path, server_url: str) -> dict[str, float]:
    """The same load into a fresh database on the PostgreSQL server at ``server_url``, dropped afterwards."""
    from synthetic.scratch_postgres import scratch_database

    with scratch_database(server_url, "ingest_bench") as url:
        return end_to_end(directory, url)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--rest-resources", type=int, default=100_000)
    parser.add_argument("--fhiry-sample", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--postgres-url", help="also load the larger NDJSON set into a fresh database on this "
                                               "PostgreSQL server (an SQLAlchemy URL, postgresql+psycopg://...)")
    parser.add_argument("--e2e-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.e2e_child:
        _e2e_child(*args.e2e_child)
        return
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        print(f"cores: {os.cpu_count()}, validation workers: {args.workers}")
        rows = []
        for n in (args.resources // 4, args.resources):
            files = work / f"ndjson-{n}"
            t0 = time.perf_counter()
            written = write_files(n, files)
            print(f"generated {written} resources in {time.perf_counter() - t0:.0f}s "
                  f"({sum(p.stat().st_size for p in files.glob('*.ndjson')) / 1e6:.0f} MB of NDJSON)")
            e2e = end_to_end(files, f"sqlite:///{work / f'w-{n}.sqlite'}")
            rows.append((written, e2e))
        ceiling = validation_ceiling(files, args.workers)
        print()
        print("NDJSON path (read, validate, plausibility, load into SQLite)")
        print(f"{'resources':>10} {'e2e res/s':>10} {'ceiling res/s':>14} {'ratio':>6} {'peak RSS parent MB':>19} "
              f"{'peak RSS worker MB':>19}")
        for written, e2e in rows:
            rate = e2e["received"] / e2e["seconds"]
            print(f"{written:>10} {rate:>10.0f} {ceiling:>14.0f} {rate / ceiling:>6.2f} {e2e['rss_parent_mb']:>19.0f} "
                  f"{e2e['rss_workers_mb']:>19.0f}")
        print(f"(ceiling: bare fhir.resources.R4B validation of the {rows[-1][0]} resources on {args.workers} cores)")
        if args.postgres_url:
            pg = postgres_end_to_end(files, args.postgres_url)
            rate = pg["received"] / pg["seconds"]
            print(f"PostgreSQL warehouse, same {rows[-1][0]} resources: {rate:.0f} res/s, ratio {rate / ceiling:.2f}, "
                  f"peak RSS parent {pg['rss_parent_mb']:.0f} MB")
        rate = fhiry_rate(files, args.fhiry_sample)
        if rate is None:
            print("fhiry: not measured (run `make bench-venv` to create benchmarks/.fhiry-venv)")
        else:
            print(f"fhiry 5.2.2 on {args.fhiry_sample} of the same resources: {rate:.0f} resources/s")
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
