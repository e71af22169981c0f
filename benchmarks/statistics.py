"""Time the study statistics, beside R on the same data.

1. The full analysis of a paper-size cohort (every comparison, sensitivity analyses, extras and a 1000-replicate
   PS-refit bootstrap).
2. Propensity model + IPTW-weighted Cox with robust SE on 100,000 patients with tied event days, in Python and,
   when Rscript is installed, in R (glm + coxph(weights, robust = TRUE)); the hazard ratios are printed side by side.

Run: .venv/bin/python benchmarks/statistics.py [--n 100000] [--replicates 1000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analytics.comparisons import study_results
from analytics.cox import fit_cox
from analytics.propensity import fit_propensity, iptw_weights

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stats"
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


def simulate(n: int, seed: int = 1) -> pd.DataFrame:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--replicates", type=int, default=1000)
    args = parser.parse_args()

    cohort = pd.read_csv(FIXTURES / "paper.csv").rename(columns={"id": "patient_key"})
    prospective = pd.read_csv(FIXTURES / "prospective_cohort.csv")
    start = time.perf_counter()
    study_results(cohort, prospective, bootstrap_replicates=args.replicates)
    print(f"full analysis, paper-size cohort ({len(cohort)} + {len(prospective)} patients, "
          f"{args.replicates} bootstrap replicates): {time.perf_counter() - start:.1f} s")

    data = simulate(args.n)
    start = time.perf_counter()
    treated = data["treated"].astype(bool)
    ps = fit_propensity(data, treated).scores
    w = iptw_weights(treated, ps)["weight"]
    fit = fit_cox(data["time"], data["event"], data["treated"], w).summary()[0]
    python_s = time.perf_counter() - start
    print(f"PS + weighted Cox with robust SE, {args.n} patients, {data['time'].nunique()} distinct days: "
          f"Python {python_s:.2f} s (HR {fit['hazard_ratio']:.8f}, robust SE {fit['robust_se']:.8f})")
    if shutil.which("Rscript"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "data.csv"
            data.to_csv(path, index=False)
            script = Path(tmp) / "bench.R"
            script.write_text(R_CODE)
            out = subprocess.run(["Rscript", str(script), str(path)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"                                                    R      {r['seconds']:.2f} s "
              f"(HR {r['hr']:.8f}, robust SE {r['robust_se']:.8f})")
    else:
        print("Rscript not found: install r-base-core r-cran-survival to time R beside it")


if __name__ == "__main__":
    main()
