"""Time the cohort derivation (flatten -> facts -> contract rules) as the hospital grows.

Prints one line per size; run with `.venv/bin/python benchmarks/cohort.py [--sizes 250 1000 4000]`.
"""
from __future__ import annotations

import argparse
import resource
import time
from datetime import date

from analytics.cohort.concepts import load_concept_map
from analytics.cohort.facts import build_facts
from analytics.cohort.params import RuleParams
from analytics.cohort.retrospective import derive_retrospective
from etl.fhir.types import flatten_all
from synthetic.hospital import HospitalParams, generate_hospital


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000],
                        help="eligible retrospective patients per generated hospital")
    args = parser.parse_args()
    concepts = load_concept_map()
    print(f"{'eligible':>8} {'patients':>9} {'resources':>10} {'flatten s':>10} {'facts s':>8} {'rules s':>8} "
          f"{'patients/s':>11} {'peak RSS MB':>12}")
    for n in args.sizes:
        hospital = generate_hospital(HospitalParams(n_retrospective=n, n_noise=n // 2))
        by_type = hospital.by_type()
        t0 = time.perf_counter()
        flat = flatten_all(by_type)
        t1 = time.perf_counter()
        facts = build_facts(flat, concepts)
        t2 = time.perf_counter()
        derive_retrospective(facts, RuleParams(data_cutoff=date(2026, 1, 1)))
        t3 = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{n:>8} {len(hospital.truth):>9} {len(hospital.resources):>10} {t1 - t0:>10.2f} {t2 - t1:>8.2f} "
              f"{t3 - t2:>8.2f} {len(hospital.truth) / (t3 - t0):>11.0f} {rss:>12.0f}")


if __name__ == "__main__":
    main()
