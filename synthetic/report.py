"""`make report`: the study report for the synthetic hospital that `make demo` built.

Runs the operators' command for one asset, ``dagster asset materialize -w workspace.yaml --select
study_report``, against the demo's warehouse, and prints where the HTML and PDF are. A hospital
runs the same command with its own WAREHOUSE_URL (see the README).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .demo import PROJECT_ROOT, dagster_home, demo_pseudonym_key


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
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-w", "workspace.yaml",
               "--select", "study_report"]
    print("$ dagster " + " ".join(command[1:]))
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (demo_dir / "report.log").write_text(done.stdout)
    if done.returncode != 0:
        print(done.stdout[-5000:])
        print(f"the study report failed (exit {done.returncode}); full log in {demo_dir / 'report.log'}")
        return done.returncode
    for name in ("study_report.html", "study_report.pdf"):
        path = reports / name
        print(f"{path}  ({path.stat().st_size:,} bytes)" if path.exists() else f"{path}: not written (see {demo_dir / 'report.log'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
