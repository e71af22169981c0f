"""Forest plot of a pooled comparison: each site's own hazard ratio with its 95% CI (box area by its
fixed-effect weight), the fixed-effect and random-effects (REML) pooled estimates as diamonds, the
exact stratified estimate when there is one, and the REML prediction interval. Pure: data in, PNG or SVG out."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.ticker import FuncFormatter

from analytics.figures import plt, to_bytes  # one figure writer for every figure

from .meta import meta_analysis

Z = 1.959963984540054


def forest_plot(sites: Sequence[str], log_hr: Sequence[float], se: Sequence[float], title: str, *,
                stratified: tuple[float, float, float] | None = None, fmt: str = "png") -> bytes:
    """``stratified``: the exact pooled (HR, CI lower, CI upper) from the round-based fit, if known; ``fmt``: png (the
    Dagster UI's metadata) or svg (the study report)."""
    y, s = np.asarray(log_hr, dtype=float), np.asarray(se, dtype=float)
    rows: list[tuple[str, float, float, float, str]] = [
        (name, math.exp(b), math.exp(b - Z * e), math.exp(b + Z * e), "site") for name, b, e in zip(sites, y, s, strict=True)]
    pi = None
    if len(y) >= 2:
        fe, re = meta_analysis(y, s, method="FE"), meta_analysis(y, s, method="REML")
        rows.append(("Fixed effect", math.exp(fe.estimate), math.exp(fe.ci_lower), math.exp(fe.ci_upper), "pooled"))
        rows.append((f"Random effects (REML), I² {re.i2:.0f}%", math.exp(re.estimate), math.exp(re.ci_lower),
                     math.exp(re.ci_upper), "pooled"))
        pi = (math.exp(re.pi_lower), math.exp(re.pi_upper))
    if stratified is not None:
        rows.append(("Stratified Cox (exact)", *stratified, "pooled"))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    weights = 1 / s ** 2
    for i, (_label, hr, lo, hi, kind) in enumerate(rows):
        pos = len(rows) - 1 - i
        if kind == "site":
            ax.plot([lo, hi], [pos, pos], color="black", linewidth=1)
            ax.scatter([hr], [pos], marker="s", s=30 + 150 * weights[i] / weights.sum(), color="#1f77b4", zorder=3)
        else:
            ax.fill([lo, hr, hi, hr], [pos, pos + 0.25, pos, pos - 0.25], color="#d62728", zorder=3)
        ax.text(1.02, pos, f"{hr:.2f} ({lo:.2f}-{hi:.2f})", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    if pi is not None:
        ax.plot(pi, [-0.6, -0.6], color="#d62728", linestyle=":", linewidth=1, label="REML prediction interval")
        ax.legend(loc="lower left", fontsize=8)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in reversed(rows)])
    ax.set_xlabel("hazard ratio (log scale), tacrolimus vs comparator")
    ax.set_title(title)
    return to_bytes(fig, fmt)
