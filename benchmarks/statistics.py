"""Time the study statistics, beside R on the same data.

1. The full analysis (``study_results``: 4 comparisons x 3 outcomes x 3 weightings, Kaplan-Meier, log-rank tests,
   balance, RMST, Aalen-Johansen and a PS-refit bootstrap) of the paper-size cohort (the committed fixtures) and of a
   synthetic cohort of 40,000 patients generated here, with the bootstrap in 1 and in 2 processes, repeated: wall
   time, and CPU time of this process and its worker processes.
2. The ceiling, measured in the same run when Rscript is installed: the same fits in R on the same 40,000 patients
   (the primary comparison's glm and three weighted coxph with robust SE; PS-refit bootstrap replicates, glm + three
   coxph each), and the same fits in Python.
3. Propensity model + IPTW-weighted Cox with robust SE on 100,000 patients with tied event days, in Python and R,
   hazard ratios side by side.

The issue-16 targets: paper cohort < 10 s, 40,000 patients <= 5 minutes on 2 cores (full analysis, 1000 replicates).
Run: .venv/bin/python benchmarks/statistics.py [--replicates 1000] [--repeats 2] [--jobs 1 2] [--large 40000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analytics import bootstrap
from analytics.comparisons import OUTCOMES, study_results
from analytics.cox import fit_cox
from analytics.parallel import single_threaded_blas
from analytics.propensity import fit_propensity, iptw_weights

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stats"
AGENTS = (["CTX", "MTX", "MMF", "AZA", "CsA"], [0.42, 0.27, 0.14, 0.13, 0.04])  # the paper cohort's mix
R_CODE = r"""
d <- read.csv(commandArgs(TRUE)[1]); suppressMessages(library(survival))
d$sex <- relevel(factor(d$sex), ref = "female"); d$diagnosis_subset <- relevel(factor(d$diagnosis_subset), ref = "DM")
t0 <- proc.time()[["elapsed"]]
ps <- fitted(glm(treated ~ age + sex + diagnosis_subset + initial_pred_mg_day + plasma_exchange + ivig, data = d,
                 family = binomial()))
d$w <- ifelse(d$treated == 1, 1 / ps, 1 / (1 - ps))
f <- coxph(Surv(time, event) ~ treated, data = d, weights = w, robust = TRUE)
el <- proc.time()[["elapsed"]] - t0
s <- summary(f)$coefficients
cat(sprintf('{"seconds": %.3f, "hr": %.10f, "robust_se": %.10f}\n', el, s[1, "exp(coef)"], s[1, "robust se"]))
"""
R_STUDY = r"""
args <- commandArgs(TRUE); d <- read.csv(args[1]); reps <- as.integer(args[2]); repeats <- as.integer(args[3])
suppressMessages(library(survival))
d$sex <- relevel(factor(d$sex), ref = "female"); d$diagnosis_subset <- relevel(factor(d$diagnosis_subset), ref = "DM")
d$treated <- as.integer(d$group == "tacrolimus")
model <- treated ~ age + sex + diagnosis_subset + initial_pred_mg_day + plasma_exchange + ivig
outcomes <- c("death", "relapse", "resp_relapse")
fits <- function(x, robust) {
  ps <- fitted(glm(model, data = x, family = binomial()))
  x$w <- ifelse(x$treated == 1, 1 / ps, 1 / (1 - ps))
  sapply(outcomes, function(o) exp(coef(coxph(as.formula(sprintf("Surv(%s_days, %s_event) ~ treated", o, o)),
                                              data = x, weights = w, robust = robust))))
}
primary <- sapply(seq_len(repeats), function(i) system.time(hr <- fits(d, TRUE))[["elapsed"]])
set.seed(1)
boot <- system.time(for (r in seq_len(reps)) fits(d[sample.int(nrow(d), replace = TRUE), ], FALSE))[["elapsed"]]
cat(sprintf('{"primary_seconds": %.3f, "replicate_seconds": %.4f, "hr_death": %.10f}\n', min(primary), boot / reps,
            fits(d, TRUE)[[1]]))
"""


def simulate(n: int, seed: int = 1) -> pd.DataFrame:
    """A propensity-model dataset with one outcome (part 3)."""
    rng = np.random.default_rng(seed)
    age = rng.normal(52, 12, n).round()
    sex = rng.choice(["female", "male"], n, p=[0.65, 0.35])
    subset = rng.choice(["DM", "PM", "CADM", "ASS"], n, p=[0.45, 0.15, 0.25, 0.15])
    pred = (rng.uniform(40, 90, n) / 5).round() * 5
    pe, ivig = rng.random(n) < 0.12, rng.random(n) < 0.2
    logit = -1.6 + 0.04 * (age - 52) + 1.2 * (subset == "CADM") + 0.02 * (pred - 65) + 0.9 * ivig + 0.8 * pe
    treated = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    rate = 0.0007 * np.exp(0.04 * (age - 52) + 0.8 * (subset == "CADM") + np.log(0.33) * treated)
    time_days = np.minimum(365, np.ceil(rng.exponential(1 / rate)))
    return pd.DataFrame({"age": age, "sex": sex, "diagnosis_subset": subset, "initial_pred_mg_day": pred,
                         "plasma_exchange": pe.astype(int), "ivig": ivig.astype(int), "treated": treated,
                         "time": time_days, "event": (time_days < 365).astype(int)})


def _outcomes(rng: np.random.Generator, risk: np.ndarray, effect: np.ndarray) -> dict[str, np.ndarray]:
    """Death, relapse and respiratory relapse in days over a year's follow-up (death and censoring end it)."""
    n = len(risk)
    death = rng.exponential(1 / (0.0009 * risk * effect))
    relapse = rng.exponential(1 / (0.0016 * risk * np.sqrt(effect)))
    resp = relapse + rng.exponential(1 / (0.0015 * risk), n)
    follow = np.ceil(np.minimum(np.minimum(death, np.where(rng.random(n) < 0.1, rng.uniform(15, 365, n), 365.0)), 365))
    out = {"followup_days": follow}
    for name, t in (("death", death), ("relapse", relapse), ("resp_relapse", resp)):
        day = np.ceil(t)
        out[f"{name}_event"] = ((day <= follow) & (day < 365)).astype(int)
        out[f"{name}_days"] = np.minimum(day, follow)
    return out


def simulate_cohort(n: int, seed: int = 16) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A retrospective cohort of n patients shaped like the paper's (confounded tacrolimus use, the conventional
    agents' mix, follow-up in days to one year: heavy ties), and a prospective cohort of the paper's relative size."""
    rng = np.random.default_rng(seed)
    age = rng.normal(52, 12, n).round().clip(18, 90)
    subset = rng.choice(["DM", "CADM", "ASS", "PM"], n, p=[0.48, 0.27, 0.13, 0.12])
    pred = (rng.lognormal(np.log(65), 0.35, n) / 5).round() * 5
    pe, ivig = rng.random(n) < 0.08, rng.random(n) < 0.2
    tac = rng.random(n) < 1 / (1 + np.exp(-(-0.3 + 0.02 * (age - 52) + 0.9 * (subset == "CADM") + 0.005 * (pred - 65)
                                            + 0.6 * ivig + 0.5 * pe)))
    risk = np.exp(0.03 * (age - 52) + 0.7 * (subset == "CADM"))
    cohort = pd.DataFrame({"patient_key": [f"r{i}" for i in range(n)], "group": np.where(tac, "tacrolimus", "conventional"),
                           "conventional_agent": np.where(tac, None, rng.choice(AGENTS[0], n, p=AGENTS[1])),
                           "age": age, "sex": rng.choice(["female", "male"], n, p=[0.65, 0.35]), "diagnosis_subset": subset,
                           "initial_pred_mg_day": pred, "plasma_exchange": pe.astype(int), "ivig": ivig.astype(int),
                           **_outcomes(rng, risk, np.where(tac, 0.5, 1.0))})
    m = max(2, round(n * 34 / 287))
    combo = rng.random(m) < 0.5
    prospective = pd.DataFrame({"patient_key": [f"p{i}" for i in range(m)],
                                "group": np.where(combo, "combination", "tacrolimus"),
                                **_outcomes(rng, np.ones(m), np.where(combo, 0.6, 1.0))})
    return cohort, prospective


def _tree_cpu() -> float:
    """CPU seconds used so far by this process and its descendants: its own, its reaped children's (Rscript), and
    each live child's with that child's reaped children (the bootstrap's fork server and the workers it forked)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == os.getpid():  # ppid; then utime, stime, cutime, cstime are fields 14-17 of the line
            total += sum(int(f) for f in fields[11:15]) / tick
    return total


def time_full_analysis(label: str, cohort: pd.DataFrame, prospective: pd.DataFrame, replicates: int, jobs: list[int],
                       repeats: int) -> None:
    for n_jobs in jobs:
        walls, cpus = [], []
        for _ in range(repeats):
            c0, w0 = _tree_cpu(), time.perf_counter()
            study_results(cohort, prospective, bootstrap_replicates=replicates, n_jobs=n_jobs)
            walls.append(time.perf_counter() - w0)
            cpus.append(_tree_cpu() - c0)
        print(f"{label:<28} {len(cohort):>8} {len(prospective):>6} {n_jobs:>6} "
              f"{' '.join(f'{w:6.1f}' for w in walls):>16} {float(np.median(walls)):>8.1f} "
              f"{' '.join(f'{c:6.1f}' for c in cpus):>16}", flush=True)


def python_study_fits(cohort: pd.DataFrame, replicates: int, repeats: int) -> tuple[float, float]:
    """What R_STUDY times, in Python: the primary comparison's PS model and three robust Cox fits (best of
    ``repeats``), and the mean time of a PS-refit bootstrap replicate in this process."""
    treated = cohort["group"].eq("tacrolimus")
    best = float("inf")
    with single_threaded_blas():
        for _ in range(repeats):
            start = time.perf_counter()
            fit = fit_propensity(cohort, treated)
            w = iptw_weights(treated, fit.scores)["weight"]
            coefs = {o: fit_cox(cohort[f"{o}_days"], cohort[f"{o}_event"], treated.astype(int), w).coef[0] for o in OUTCOMES}
            best = min(best, time.perf_counter() - start)
        problem = bootstrap.BootstrapProblem.build(fit.design, treated, fit.coefficients[fit.design.columns],
                                                   {o: (cohort[f"{o}_days"], cohort[f"{o}_event"], coefs[o]) for o in OUTCOMES})
        start = time.perf_counter()
        bootstrap.run(problem, replicates, seed=1)
        per_replicate = (time.perf_counter() - start) / replicates
    return best, per_replicate


def _rscript(code: str, data: pd.DataFrame, *args: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path, script = Path(tmp) / "data.csv", Path(tmp) / "bench.R"
        data.to_csv(path, index=False)
        script.write_text(code)
        out = subprocess.run(["Rscript", str(script), str(path), *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=1000, help="PS-refit bootstrap replicates of the full analysis")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each full analysis")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="bootstrap processes (n_jobs) to time")
    parser.add_argument("--large", type=int, default=40_000, help="patients in the synthetic retrospective cohort")
    parser.add_argument("--ceiling-replicates", type=int, default=50, help="bootstrap replicates timed in R and Python")
    parser.add_argument("--n", type=int, default=100_000, help="patients in part 3")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start (the machine may be shared)\n")

    print(f"1. Full analysis, {args.replicates} bootstrap replicates: wall and CPU seconds (CPU includes worker processes)")
    print(f"{'cohort':<28} {'retro':>8} {'prosp':>6} {'n_jobs':>6} {'wall per run':>16} {'median':>8} {'CPU per run':>16}")
    paper = pd.read_csv(FIXTURES / "paper.csv").rename(columns={"id": "patient_key"})
    time_full_analysis("paper-size (fixtures)", paper, pd.read_csv(FIXTURES / "prospective_cohort.csv"), args.replicates,
                       args.jobs, args.repeats)
    large, large_prospective = simulate_cohort(args.large)
    time_full_analysis(f"synthetic {args.large:,}", large, large_prospective, args.replicates, args.jobs, args.repeats)

    print(f"\n2. Ceiling: the same fits on the synthetic {args.large:,} patients (seconds)")
    py_primary, py_replicate = python_study_fits(large, args.ceiling_replicates, args.repeats)
    print(f"{'':<58} {'Python':>8} {'R':>8}")
    if shutil.which("Rscript"):
        r = _rscript(R_STUDY, large, str(args.ceiling_replicates), str(args.repeats))
        r_primary, r_replicate = f"{r['primary_seconds']:8.2f}", f"{r['replicate_seconds']:8.3f}"
    else:
        r_primary = r_replicate = f"{'-':>8}"
    print(f"{'primary comparison: PS glm + 3 weighted robust Cox fits':<58} {py_primary:8.2f} {r_primary}")
    print(f"{'one PS-refit bootstrap replicate (glm + 3 Cox), mean of ' + str(args.ceiling_replicates):<58} "
          f"{py_replicate:8.3f} {r_replicate}")
    if shutil.which("Rscript"):
        print(f"{'  x ' + str(args.replicates) + ' replicates, one process':<58} {py_replicate * args.replicates:8.1f} "
              f"{r['replicate_seconds'] * args.replicates:8.1f}")

    print(f"\n3. PS + weighted Cox with robust SE, {args.n:,} patients")
    data = simulate(args.n)
    with single_threaded_blas():
        start = time.perf_counter()
        treated = data["treated"].astype(bool)
        ps = fit_propensity(data, treated).scores
        w = iptw_weights(treated, ps)["weight"]
        fit = fit_cox(data["time"], data["event"], data["treated"], w).summary()[0]
        python_s = time.perf_counter() - start
    print(f"{data['time'].nunique()} distinct days: Python {python_s:.2f} s (HR {fit['hazard_ratio']:.8f}, "
          f"robust SE {fit['robust_se']:.8f})")
    if shutil.which("Rscript"):
        r = _rscript(R_CODE, data)
        print(f"{'':<{len(str(data['time'].nunique())) + 15}}R      {r['seconds']:.2f} s (HR {r['hr']:.8f}, "
              f"robust SE {r['robust_se']:.8f})")
    else:
        print("Rscript not found: install r-base-core r-cran-survival to time R beside it")


if __name__ == "__main__":
    main()
