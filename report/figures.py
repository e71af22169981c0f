"""The report's figures that analytics/figures.py does not already draw: the attrition flowcharts
(Supplementary Figures S1, S3), the forest plot, the between-group scale changes (Figure 3A-C,
Supplementary Figure S4), the HRCT scores (Figure 4) and the IPTW weight distribution. Pure: tables
in, SVG bytes out (the Kaplan-Meier curves, love plot, PS overlap and scale box plots come from
analytics.figures with fmt="svg")."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from analytics.figures import COLOURS, to_bytes  # noqa: E402

SVG = "svg"
ANALYSIS_MARKERS = {"primary": "s", "stabilized": "o", "truncated_1_99": "D", "bootstrap": "^"}


def _box(ax: plt.Axes, x: float, y: float, w: float, h: float, text: str, *, face: str = "white",
         colour: str = "black", size: float = 8.5) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02", facecolor=face,
                                edgecolor=colour, linewidth=0.9))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, color=colour, wrap=True)


def _arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "linewidth": 0.9, "color": "black"})


def attrition_flowchart(attrition: pd.DataFrame, labels: Mapping[str, str], start_label: str,
                        groups: Sequence[tuple[str, int]], title: str) -> bytes:
    """Boxes down the left (patients remaining after each step) and an exclusion box to the right of each
    step that excluded anyone, ending in the analysed groups. ``attrition`` is one cohort's rows."""
    steps = attrition.sort_values("step")
    first, rest = steps.iloc[0], steps.iloc[1:]
    shown = rest[rest["n_excluded"] > 0]
    rows = len(shown) + 2
    fig, ax = plt.subplots(figsize=(7.2, 0.62 * rows + 0.9))
    ax.set_xlim(0, 10)
    ax.set_ylim(-rows + 0.4, 1.0)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    y = 0.0
    _box(ax, 2.6, y, 4.4, 0.5, f"{start_label}\nn = {int(first['n_remaining'])}")
    for step in shown.itertuples(index=False):
        y -= 1.0
        _arrow(ax, (2.6, y + 0.75), (2.6, y + 0.25))
        _box(ax, 2.6, y, 4.4, 0.5, f"n = {int(step.n_remaining)}")
        ax.plot([2.6, 5.0], [y + 0.5, y + 0.5], color="black", linewidth=0.9)
        _box(ax, 7.4, y + 0.5, 4.6, 0.42, f"{labels.get(step.reason, step.reason)}: {int(step.n_excluded)}",
             face="#f4f4f4", size=8)
    y -= 1.0
    width = 9.0 / max(len(groups), 1)
    for i, (name, n) in enumerate(groups):
        x = 0.5 + width * (i + 0.5)
        _arrow(ax, (2.6, y + 0.75), (x, y + 0.28))
        _box(ax, x, y, width - 0.4, 0.5, f"{name}\nn = {n}", face="#eef3fb", colour=COLOURS[i % len(COLOURS)])
    return to_bytes(fig, SVG)


def forest_plot(effects: pd.DataFrame, published: Mapping[tuple[str, str], float], labels: Mapping[str, str]) -> bytes:
    """One row per comparison x outcome x analysis: the HR and its CI on a log axis; the paper's HR, where it
    reports one for that comparison and outcome, as a red cross on the primary row."""
    rows = effects.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.6, 0.2 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    finite = rows[np.isfinite(rows["hazard_ratio"].astype(float))]
    for analysis, marker in ANALYSIS_MARKERS.items():
        sel = rows["analysis"] == analysis
        if not sel.any():
            continue
        hr, lo, hi = (rows.loc[sel, c].astype(float).to_numpy() for c in ("hazard_ratio", "ci_lower", "ci_upper"))
        ax.errorbar(hr, y[sel.to_numpy()], xerr=[hr - lo, hi - hr], fmt=marker, markersize=3.5, capsize=1.5,
                    linewidth=0.8, color=COLOURS[0] if analysis == "primary" else "grey", label=analysis.replace("_", " "))
    marked = False
    for i, row in rows.iterrows():
        key = (row["comparison"], row["outcome"])
        if row["analysis"] == "primary" and key in published:
            ax.plot(published[key], y[i], "x", color=COLOURS[1], markersize=7, markeredgewidth=1.6,
                    label=None if marked else "published (paper)")
            marked = True
    ax.axvline(1.0, color="black", linewidth=0.7, linestyle="--")
    ax.set_xscale("log")
    bounds = [b for b in (*finite["ci_lower"].astype(float), *finite["ci_upper"].astype(float), *published.values(), 1.0)
              if np.isfinite(b) and b > 0]
    ax.set_xlim(max(min(bounds) / 1.3, 0.01), min(max(bounds) * 1.3, 100))
    ax.set_yticks(y)
    ax.set_yticklabels([f"{labels.get(r.comparison, r.comparison)} · {labels.get(r.outcome, r.outcome)} · "
                        f"{r.analysis.replace('_', ' ')}" for r in rows.itertuples()], fontsize=6.5)
    ax.set_ylim(-1, len(rows))
    ax.set_xlabel("hazard ratio (log scale); < 1 favours the first-named group")
    ax.legend(loc="upper right", fontsize=7, frameon=True)
    fig.tight_layout()
    return to_bytes(fig, SVG)


def group_changes(scales: pd.DataFrame, measures: Sequence[str], names: Mapping[str, str], groups: Sequence[str],
                  title: str, group_names: Mapping[str, str]) -> bytes:
    """Median and IQR of each scale at each visit, per group side by side (Figure 3A-C, Supplementary
    Figure S4), with the between-group p of the change from baseline marked where it is below 0.05."""
    cols = min(3, len(measures))
    nrows = int(np.ceil(len(measures) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 2.5 * nrows), squeeze=False)
    for ax, measure in zip(axes.flat, measures, strict=False):  # spare axes are switched off below
        s = scales[scales["scale"] == measure]
        for offset, (colour, group) in zip((-0.12, 0.12), zip(COLOURS, groups, strict=True), strict=True):
            g = s[s["group"] == group].sort_values("visit_month")
            x = np.arange(len(g)) + offset
            med = g["median"].astype(float).to_numpy()
            ax.errorbar(x, med, yerr=[med - g["q1"].astype(float).to_numpy(), g["q3"].astype(float).to_numpy() - med],
                        fmt="o-", markersize=3, capsize=2, linewidth=0.9, color=colour, label=group_names.get(group, group))
        months = sorted(s["visit_month"].unique())
        ax.set_xticks(range(len(months)))
        ax.set_xticklabels([f"M{m}" for m in months], fontsize=7)
        between = s[(s["group"] == groups[0])].set_index("visit_month")["p_between_groups"]
        for i, month in enumerate(months):
            p = between.get(month, np.nan)
            if p is not None and not pd.isna(p) and p < 0.05:
                ax.annotate("*", (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=12)
        ax.set_title(names.get(measure, measure), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return to_bytes(fig, SVG)


def hrct_panels(hrct: pd.DataFrame, names: Mapping[str, str], groups: Sequence[str], group_names: Mapping[str, str]) -> bytes:
    """Baseline and month-12 medians of each HRCT measure per group (Figure 4A-E): a line per group."""
    measures = list(dict.fromkeys(hrct["measure"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(2.1 * len(measures), 2.6), squeeze=False)
    for ax, measure in zip(axes.flat, measures, strict=True):
        m = hrct[hrct["measure"] == measure]
        for colour, group in zip(COLOURS, groups, strict=False):  # two colours, two groups
            g = m[m["group"] == group]
            if len(g):
                ax.plot([0, 1], [float(g["baseline_median"].iloc[0]), float(g["month12_median"].iloc[0])], "o-",
                        color=colour, label=group_names.get(group, group), linewidth=1)
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["baseline", "M12"], fontsize=7)
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(names.get(measure, measure), fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].set_ylabel("median score", fontsize=8)
    axes.flat[0].legend(fontsize=6.5)
    fig.tight_layout()
    return to_bytes(fig, SVG)


def weight_distribution(weights: pd.DataFrame, title: str) -> bytes:
    """Histograms of the IPTW weights per arm (``weights`` has columns weight and arm), on a log axis: the
    few large weights that drive the variance are what a reviewer looks for."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    w = weights["weight"].astype(float)
    bins = np.geomspace(max(w.min(), 1e-3) * 0.95, w.max() * 1.05, 30) if len(w) else 10
    for colour, (arm, part) in zip(COLOURS, weights.groupby("arm", sort=False), strict=False):  # two arms
        ax.hist(part["weight"].astype(float), bins=bins, alpha=0.6, color=colour, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("IPTW weight (log scale)")
    ax.set_ylabel("patients")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return to_bytes(fig, SVG)
