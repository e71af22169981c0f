"""Time and peak memory of the cohort step as the hospital grows: the whole hospital flattened at once
(the old path, ``derive_whole_hospital``) beside chunks of candidate patients read from the warehouse
(the asset's path, ``derive_in_chunks``), in the same run on the same warehouse.

Each path runs in its own child process, so that its peak RSS (VmHWM) is its own; for the chunked path the
figure is the largest of that process and its worker processes (each holding one chunk at a time).
``rules CPU s`` is the time inside the contract rules (``chunk_outcome``: both cohorts and safety, summed over
chunks and workers) and ``pts/CPU s`` divides the patients the rules read by it: every patient for the
whole-hospital path, the candidates for the chunked one. ``cand. s`` is the chunked path's wall time for the
candidates' chunks, reading and flattening included, on ``workers`` processes, and ``pts/s`` the candidates
per second of it (for the whole-hospital path: the rules' time alone).

    PYTHONPATH=. .venv/bin/python benchmarks/cohort.py [--patients 1000 4000 40000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

RUNS = ("whole", "chunked")


def _child(run: str, url: str) -> None:
    from datetime import date

    from analytics.cohort import tables as cohort_tables
    from analytics.cohort.concepts import load_concept_map
    from analytics.cohort.params import RuleParams
    from assets.study import cohort_source
    from etl.warehouse import Warehouse

    wh, concepts, params = Warehouse(url), load_concept_map(), RuleParams(data_cutoff=date(2026, 1, 1))
    timings: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), _cpu_s()
    if run == "whole":
        rules = {"s": 0.0}
        outcome = cohort_tables.chunk_outcome

        def timed(*args):  # type: ignore[no-untyped-def]
            t = time.process_time()
            result = outcome(*args)
            rules["s"] += time.process_time() - t
            return result

        cohort_tables.chunk_outcome = timed  # type: ignore[assignment]
        tables, patients = cohort_source.derive_whole_hospital(wh, concepts, params)
        timings.update(rules_cpu_s=rules["s"], rule_patients=len(patients), rules_wall_s=rules["s"], workers=1)
    else:
        tables, patients = cohort_source.derive_in_chunks(wh, concepts, params, timings=timings)
        # Candidates' chunks (read, flatten, facts, rules) run in the workers: their wall time bounds the rules'.
        timings.update(rule_patients=timings["candidates"], rules_wall_s=timings["candidates_s"])
    timings.update(wall_s=time.perf_counter() - started, step_cpu_s=_cpu_s() - cpu_started, cohort=len(tables.tables["cohort"]),
                   patients=len(patients),
                   peak_rss_mb=max(cohort_source.peak_rss_mb(), timings.get("worker_peak_rss_mb", 0.0)))
    print(json.dumps(timings))


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (the chunks' workers, once the pool is shut)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run_child(run: str, url: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", run, url], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _build_warehouse(n_patients: int, url: str) -> tuple[int, int]:
    from etl.fhir.types import RESOURCE_TYPES
    from etl.records import RawRow
    from etl.warehouse import Warehouse
    from synthetic.hospital import HospitalParams, generate_hospital

    # About a fifth of the hospital is eligible and most of the rest is noise, as in issue 16's hospital
    # (8,213 of 40,000 in the cohort).
    base = HospitalParams()
    eligible = max(n_patients // 5, 10)
    params = replace(base, n_retrospective=eligible, n_noise=max(n_patients - eligible - base.n_prospective_enrolled, 0))
    hospital = generate_hospital(params)
    wh = Warehouse(url)
    wh.ensure_schema(RESOURCE_TYPES)
    by_type: dict[str, list] = {}
    for r in hospital.resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for rtype, rows in by_type.items():
        for i in range(0, len(rows), 20_000):
            wh.apply(rtype, [RawRow.of(r, "benchmark") for r in rows[i:i + 20_000]])
    wh.engine.dispose()
    return len(by_type.get("Patient", [])), len(hospital.resources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, nargs="+", default=[1000, 4000], help="patients per generated hospital")
    parser.add_argument("--keep", help="directory to keep (and reuse) the generated warehouses in")
    parser.add_argument("--only", choices=RUNS, help="run one path only (the whole-hospital path needs ~120 kB per resource)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    directory = Path(args.keep or tempfile.mkdtemp(prefix="cohort-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"{'patients':>8} {'resources':>9} {'path':>8} {'step s':>7} {'workers':>7} {'rule pts':>8} {'rules CPU s':>11} "
          f"{'pts/CPU s':>9} {'cand. s':>7} {'pts/s':>6} {'cohort':>6} {'peak RSS MB':>11}")
    for n in args.patients:
        file = directory / f"hospital-{n}.sqlite"
        meta = directory / f"hospital-{n}.json"
        if not file.exists() or not meta.exists():
            file.unlink(missing_ok=True)
            patients, resources = _build_warehouse(n, f"sqlite:///{file}")
            meta.write_text(json.dumps({"patients": patients, "resources": resources}))
        sizes = json.loads(meta.read_text())
        for run in ([args.only] if args.only else RUNS):
            f = _run_child(run, f"sqlite:///{file}")
            print(f"{sizes['patients']:>8} {sizes['resources']:>9} {run:>8} {f['wall_s']:>7.1f} {f['workers']:>7} "
                  f"{f['rule_patients']:>8} {f['rules_cpu_s']:>11.2f} {f['rule_patients'] / max(f['rules_cpu_s'], 1e-9):>9.0f} "
                  f"{f['rules_wall_s']:>7.2f} {f['rule_patients'] / max(f['rules_wall_s'], 1e-9):>6.0f} {f['cohort']:>6} "
                  f"{f['peak_rss_mb']:>11.0f}", flush=True)

if __name__ == "__main__":
    main()
