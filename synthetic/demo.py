"""`make demo` (and `make dev`): the whole service on an embedded default.

Generates the synthetic hospital, serves it from a local sekmet-fhir server on 127.0.0.1, runs
the operators' command ``dagster asset materialize -w workspace.yaml --select '*'`` against it
into a SQLite warehouse, prints the headline table and stops the server.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from etl.warehouse import Warehouse

from .hospital import HospitalParams, generate_hospital
from .load import load_server, write_ndjson, write_truth
from .sandbox import SandboxFhirServer

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def demo_pseudonym_key(path: Path) -> str:
    """A key generated once for the demo and kept beside its warehouse (never use it for real data)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    path.write_text(key)
    path.chmod(0o600)
    print(f"PSEUDONYM_KEY not set: generated a demo key in {path}")
    return key


def dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return path


def headline(warehouse: Warehouse) -> str:
    cohort = warehouse.read_table("cohort")
    effects = warehouse.read_table("effect_estimates")
    effects = effects[(effects["analysis"] == "primary") & (effects["comparison"] == "tacrolimus_vs_conventional")]
    attrition = warehouse.read_table("cohort_attrition")
    n_all = int(attrition.loc[attrition["step"] == 0, "n_remaining"].iloc[0])
    groups = cohort["group"].value_counts()
    lines = [
        "IIM-ILD retrospective cohort: IPTW-weighted Cox (robust CI), IPTW log-rank (Xie & Liu),",
        "tacrolimus vs conventional immunosuppressants",
        f"cohort {len(cohort)} of {n_all} patients: tacrolimus n={groups.get('tacrolimus', 0)}, "
        f"conventional n={groups.get('conventional', 0)}",
        "",
        f"{'outcome':<13} {'events tac':>11} {'events conv':>12}   {'HR (95% CI, robust)':<24} {'p':>8} {'log-rank p':>11}",
    ]
    for row in effects.itertuples(index=False):
        hr = "not estimable" if pd.isna(row.hazard_ratio) else f"{row.hazard_ratio:.3f} ({row.ci_lower:.3f}-{row.ci_upper:.3f})"
        p = "" if pd.isna(row.p_value) else f"{row.p_value:.4f}"
        lr = "" if pd.isna(row.logrank_p) else f"{row.logrank_p:.4f}"
        lines.append(f"{row.outcome:<13} {row.events_treated:>5}/{row.n_treated:<5} {row.events_control:>6}/{row.n_control:<5}"
                     f"   {hr:<24} {p:>8} {lr:>11}")
    return "\n".join(lines)


def materialize(selection: str, env: dict[str, str], log: Path, what: str) -> int:
    """The operator's command, ``dagster asset materialize -w workspace.yaml --select <selection>``, its output kept
    in ``log`` and its tail printed when it fails."""
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-w", "workspace.yaml",
               "--select", selection]
    print("$ dagster " + " ".join(command[1:]))
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write_text(done.stdout)
    if done.returncode != 0:
        print(done.stdout[-5000:])
        print(f"{what} failed (exit {done.returncode}); full log in {log}")
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=HospitalParams().seed)
    parser.add_argument("--state-dir", type=Path, default=PROJECT_ROOT / ".state")
    parser.add_argument("--ui", action="store_true",
                        help="open the Dagster UI on the loaded sandbox instead of materializing (make dev)")
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port with --ui")
    args = parser.parse_args(argv)

    demo_dir = args.state_dir / "demo"
    params = HospitalParams(seed=args.seed)
    hospital = generate_hospital(params)
    write_ndjson(hospital, demo_dir / "ndjson")
    write_truth(hospital, demo_dir / "truth.csv")
    print(f"synthetic hospital: {len(hospital.resources)} FHIR resources, {len(hospital.truth)} patients "
          f"(NDJSON and ground truth in {demo_dir})")

    shutil.rmtree(demo_dir / "fhir-server", ignore_errors=True)  # a fresh server each run: re-runs are identical
    warehouse_url = os.environ.get("WAREHOUSE_URL") or f"sqlite:///{demo_dir / 'warehouse.sqlite'}"
    env = {
        **os.environ,
        "WAREHOUSE_URL": warehouse_url,
        "PSEUDONYM_KEY": os.environ.get("PSEUDONYM_KEY") or demo_pseudonym_key(demo_dir / "pseudonym.key"),
        "DAGSTER_HOME": str(dagster_home(Path(os.environ.get("DAGSTER_HOME") or args.state_dir / "dagster_home"))),
    }
    with SandboxFhirServer(demo_dir / "fhir-server") as server:
        print(f"sandbox FHIR server (sekmet-fhir) on {server.base_url}: loading ...")
        load_server(server.base_url, hospital.resources)
        env["FHIR_BASE_URL"] = server.base_url
        if args.ui:
            print(f"Dagster UI on http://127.0.0.1:{args.port} (Ctrl-C stops it and the sandbox server)")
            ui = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                  "-p", str(args.port)]
            try:
                return subprocess.run(ui, cwd=PROJECT_ROOT, env=env).returncode
            except KeyboardInterrupt:
                return 0
        code = materialize("*", env, demo_dir / "materialize.log", "materialization")
        if code != 0:
            return code
    print(f"materialized every asset (log: {demo_dir / 'materialize.log'})\n")
    print(headline(Warehouse(warehouse_url)))
    print(f"\ngenerator's true hazard ratios: death {params.hr_death}, relapse {params.hr_relapse}")
    print(f"warehouse: {warehouse_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
