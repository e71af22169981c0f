"""Per-resource cost of validation: the parse floor, fhir.resources alone (the check before the schema), and the
hybrid (the generated JSON schema, fhir.resources only on what it refuses), on the same synthetic NDJSON lines.

Each figure is CPU time per resource in one process, the best and the median of ``--repeats`` runs; the ratios
set each check beside ``orjson.loads`` measured in the same run (the machine is shared and noisy). Also: the
resident memory the compiled schema adds to a fresh process (each validation worker pays it once).

Run: .venv/bin/python -m benchmarks.validation [--resources 50000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import orjson

ROOT = Path(__file__).resolve().parent.parent


def _lines(n: int) -> list[tuple[bytes, str]]:
    from benchmarks.ingest import scaled_hospital

    return [(orjson.dumps(r), r["resourceType"]) for r in scaled_hospital(n)]


def _run(lines: list[tuple[bytes, str]], check: Callable[[dict, str, bytes], list[str]] | None) -> tuple[float, int]:
    """CPU seconds for parsing (and checking) every line; the number of lines found invalid."""
    invalid = 0
    started = time.process_time()
    if check is None:
        for text, _ in lines:
            orjson.loads(text)
    else:
        for text, rtype in lines:
            invalid += bool(check(orjson.loads(text), rtype, text))
    return time.process_time() - started, invalid


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _rss_child() -> None:
    """In a fresh process: RSS after importing the validation module, after compiling the schema, and after the
    first fhir.resources validation (the models a worker loads on the slow path)."""
    from etl.fhir.validation import fhir_resources_errors, validation_errors

    base = _rss_kb()
    patient = {"resourceType": "Patient", "id": "p", "gender": "female"}
    validation_errors(patient, "Patient")
    compiled = _rss_kb()
    fhir_resources_errors({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}}, "Observation")
    print(json.dumps({"schema_mb": (compiled - base) / 1024, "first_model_mb": (_rss_kb() - compiled) / 1024,
                      "process_mb": _rss_kb() / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resources", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child()
        return

    from etl.fhir.schema.runtime import _load
    from etl.fhir.validation import fhir_resources_errors, validation_errors

    lines = _lines(args.resources)
    n = len(lines)
    print(f"{n:,} synthetic NDJSON lines, {sum(len(t) for t, _ in lines) / n:.0f} bytes on average; "
          f"{args.repeats} repeats; CPU time of one process")
    started = time.perf_counter()
    _load()
    print(f"schema compile: {time.perf_counter() - started:.2f} s (once per process)")
    for _, rtype in lines[:200]:  # import every model before timing
        fhir_resources_errors({"resourceType": rtype, "id": "x"}, rtype)
    validator, _ = _load()
    checks: dict[str, Callable | None] = {"orjson.loads (parse floor)": None,
                                          "fhir.resources + primitive walk (before)": fhir_resources_errors,
                                          "hybrid: schema, fhir.resources on refusal (now)": validation_errors,
                                          "parse + schema is_valid only (no envelope)": lambda r, rtype, text: not validator.is_valid(r)}
    times: dict[str, list[float]] = {name: [] for name in checks}
    verdicts: dict[str, int] = {}
    gc.collect()
    gc.freeze()  # the lines list is long-lived: keep the collector from walking it over and over
    for _ in range(args.repeats):
        for name, check in checks.items():  # interleaved, so that load on the machine hits each alike
            seconds, invalid = _run(lines, check)
            times[name].append(seconds / n * 1e6)
            verdicts[name] = invalid
    floor = min(times["orjson.loads (parse floor)"])
    print(f"\n{'per resource':52} {'best us':>8} {'median us':>10} {'x parse':>8} {'invalid':>8}")
    for name, runs in times.items():
        print(f"{name:52} {min(runs):8.1f} {statistics.median(runs):10.1f} {min(runs) / floor:8.1f} {verdicts[name]:8}")
    before, now = times["fhir.resources + primitive walk (before)"], times["hybrid: schema, fhir.resources on refusal (now)"]
    print(f"\nbefore / now: {min(before) / min(now):.1f}x best of {args.repeats}, "
          f"{statistics.median(before) / statistics.median(now):.1f}x median")
    out = subprocess.run([sys.executable, "-m", "benchmarks.validation", "--rss-child"], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"RSS of a fresh process: +{rss['schema_mb']:.0f} MB for the compiled schema, +{rss['first_model_mb']:.0f} MB "
          f"when fhir.resources first validates (the slow path); {rss['process_mb']:.0f} MB in all")


if __name__ == "__main__":
    main()
