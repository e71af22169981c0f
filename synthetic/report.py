"""`make report`: the study report for the synthetic hospital that `make demo` built.

Runs the operators' command for one asset, ``dagster asset materialize -w workspace.yaml --select
study_report``, against the demo's warehouse, and prints where the HTML and PDF are. A hospital
runs the same command with its own WAREHOUSE_URL (see the README).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .demo import PROJECT_ROOT, dagster_home, demo_pseudonym_key, materialize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=PROJECT_ROOT / ".state")
    args = parser.parse_args(argv)
    demo_dir = args.state_dir / "demo"
    warehouse = demo_dir / "warehouse.sqlite"
    if not os.environ.get("WAREHOUSE_URL") and not warehouse.exists():
        print(f"no demo warehouse at {warehouse}: run `make demo` first")
        return 2
    reports = Path(os.environ.get("REPORTS_DIR") or args.state_dir / "reports")
    env = {
        **os.environ,
        "WAREHOUSE_URL": os.environ.get("WAREHOUSE_URL") or f"sqlite:///{warehouse}",
        "PSEUDONYM_KEY": os.environ.get("PSEUDONYM_KEY") or demo_pseudonym_key(demo_dir / "pseudonym.key"),
        "DAGSTER_HOME": str(dagster_home(Path(os.environ.get("DAGSTER_HOME") or args.state_dir / "dagster_home"))),
        "REPORTS_DIR": str(reports),
    }
    code = materialize("study_report", env, demo_dir / "report.log", "the study report")
    if code != 0:
        return code
    for name in ("study_report.html", "study_report.pdf"):
        path = reports / name
        print(f"{path}  ({path.stat().st_size:,} bytes)" if path.exists() else f"{path}: not written (see {demo_dir / 'report.log'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
