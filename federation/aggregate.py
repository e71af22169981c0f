"""The coordinator's use of site packages: verify every package in the exchange, report the ones it cannot
use (and why: a tampered package, another contract), and meta-analyse the accepted sites' own estimates.
Pure apart from reading the exchange; the statistics are analytics/pooling/meta.py."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from analytics.pooling.meta import METHODS, TESTS, meta_analysis

from .exchange import Exchange
from .verify import PackageRejected, verify_document

AGGREGATES = "aggregates"
ESTIMATE_COLUMNS = ["site_id", "comparison", "outcome", "log_hr", "robust_se", "n_treated", "n_control", "events_treated",
                    "events_control", "note"]
META_COLUMNS = ["comparison", "outcome", "method", "test", "k", "sites", "estimate", "se", "ci_lower", "ci_upper", "p_value",
                "hazard_ratio", "hr_ci_lower", "hr_ci_upper", "q", "q_p", "i2", "h2", "tau2", "pi_lower", "pi_upper", "note"]
HETEROGENEITY_COLUMNS = ["comparison", "outcome", "site_id", "log_hr", "robust_se", "weight_fe", "weight_re", "z_residual",
                         "q", "q_p", "i2", "tau2"]


def aggregates_name(site: str) -> str:
    return f"{AGGREGATES}/{site}.json"


@dataclass
class Collected:
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)          # site -> verified payload
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)         # document -> (code, reason)


def collect_packages(exchange: Exchange, site_keys: Mapping[str, Ed25519PublicKey], contract_digest: str, *,
                     data_cutoff: date | None = None) -> Collected:
    """Every ``aggregates/<site>.json``, verified (signed by that site, schema, contract digest, small cells,
    and the consortium's data cut-off when it names one)."""
    out = Collected()
    for name in exchange.list(AGGREGATES):
        site = name.removeprefix(f"{AGGREGATES}/").removesuffix(".json")
        try:
            out.accepted[site] = verify_document(exchange.get(name), "site_aggregates", site_keys, expected_signer=site,
                                                 expected_digest=contract_digest, expected_data_cutoff=data_cutoff)
        except PackageRejected as exc:
            out.rejected[name] = (exc.code, exc.reason)
    return out


def unpooled_sites(collected: Collected, sites: Sequence[str]) -> dict[str, str]:
    """The sites a session must not ask, with the reason: no accepted package (another contract, a package that
    failed verification, or none). A session pools only sites whose package says they work under its contract."""
    out = {}
    for site in sites:
        if site in collected.accepted:
            continue
        rejected = collected.rejected.get(aggregates_name(site))
        out[site] = (f"package rejected ({rejected[0]}): {rejected[1]}" if rejected
                     else f"no package in the exchange ({aggregates_name(site)})")
    return out


def site_estimates(packages: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    rows = []
    for site, p in sorted(packages.items()):
        for comparison, c in p["comparisons"].items():
            for outcome, o in c["outcomes"].items():
                est = o["estimate"] or {}
                rows.append({"site_id": site, "comparison": comparison, "outcome": outcome, "log_hr": est.get("log_hr", math.nan),
                             "robust_se": est.get("robust_se", math.nan), "n_treated": c["n_treated"], "n_control": c["n_control"],
                             "events_treated": o["events_treated"], "events_control": o["events_control"], "note": o["note"]})
    return pd.DataFrame(rows, columns=ESTIMATE_COLUMNS)


def meta_table(estimates: pd.DataFrame, methods: Sequence[str] = METHODS, tests: Sequence[str] = TESTS) -> pd.DataFrame:
    """One row per comparison × outcome × method × test over the sites with an estimate (k >= 2 to pool)."""
    rows = []
    for (comparison, outcome), g in estimates.groupby(["comparison", "outcome"], sort=False):
        g = g[np.isfinite(g["log_hr"])]
        for method in methods:
            for test in tests:
                row: dict[str, Any] = {"comparison": comparison, "outcome": outcome, "method": method, "test": test,
                                       "k": len(g), "sites": ",".join(g["site_id"])}
                if len(g) < 2:
                    row["note"] = "fewer than two sites with an estimate"
                else:
                    r = meta_analysis(g["log_hr"], g["robust_se"], method=method, test=test).to_dict()
                    row.update({k: r[k] for k in META_COLUMNS if k in r and k not in ("k",)})
                    row.update({"hazard_ratio": math.exp(r["estimate"]), "hr_ci_lower": math.exp(r["ci_lower"]),
                                "hr_ci_upper": math.exp(r["ci_upper"]), "note": None})
                rows.append(row)
    return pd.DataFrame(rows, columns=META_COLUMNS)


def heterogeneity_table(estimates: pd.DataFrame) -> pd.DataFrame:
    """Per site and comparison × outcome: its weight in the fixed-effect and REML pools, and its standardized
    deviation from the fixed-effect estimate (the squares add up to Cochran's Q)."""
    rows = []
    for (comparison, outcome), g in estimates.groupby(["comparison", "outcome"], sort=False):
        g = g[np.isfinite(g["log_hr"])]
        if len(g) < 2:
            continue
        fe = meta_analysis(g["log_hr"], g["robust_se"], method="FE")
        re = meta_analysis(g["log_hr"], g["robust_se"], method="REML")
        v = g["robust_se"].to_numpy() ** 2
        w_fe, w_re = 1 / v, 1 / (v + re.tau2)
        for i, r in enumerate(g.itertuples(index=False)):
            rows.append({"comparison": comparison, "outcome": outcome, "site_id": r.site_id, "log_hr": r.log_hr,
                         "robust_se": r.robust_se, "weight_fe": float(w_fe[i] / w_fe.sum()), "weight_re": float(w_re[i] / w_re.sum()),
                         "z_residual": float((r.log_hr - fe.estimate) / r.robust_se), "q": fe.q, "q_p": fe.q_p,
                         "i2": re.i2, "tau2": re.tau2})
    return pd.DataFrame(rows, columns=HETEROGENEITY_COLUMNS)
