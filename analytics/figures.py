"""Figures people would rather look at than read: IPTW Kaplan-Meier curves with numbers at risk
(the paper's Figure 1), the love plot and the propensity-score overlap. Pure: data in, PNG (the Dagster UI)
or SVG (the study report) bytes out."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .balance import BALANCE_THRESHOLD  # noqa: E402

COLOURS = ["#1f77b4", "#d62728"]


def to_bytes(fig: plt.Figure, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG, and closed. SVG keeps its text as text (smaller, selectable, sharp in print)
    and a fixed id salt and no date, so the same figure gives the same bytes."""
    buffer = io.BytesIO()
    if fmt == "svg":
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "iimild"}):
            fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    elif fmt == "png":
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    else:
        plt.close(fig)
        raise ValueError(f"figure format must be png or svg, not {fmt!r}")
    plt.close(fig)
    return buffer.getvalue()


def _at(curve: pd.DataFrame, day: float, column: str) -> float:
    """A step function's value at ``day`` (the last row at or before it)."""
    before = curve[curve["time_days"] <= day]
    if column == "n_at_risk":  # at risk at day: those with time >= day
        later = curve[curve["time_days"] >= day]
        return float(later["n_at_risk"].iloc[0]) if len(later) else 0.0
    return float(before[column].iloc[-1]) if len(before) else 1.0


def km_plot(curves: pd.DataFrame, title: str, *, label: str = "Survival", logrank_p: float | None = None,
            hazard_ratio: tuple[float, float, float] | None = None, horizon: int = 365, weighted: bool = True, fmt: str = "png") -> bytes:
    """Step curves with their CI bands per group and a numbers-at-risk table underneath."""
    fig, (ax, table) = plt.subplots(2, 1, figsize=(7, 5.2), gridspec_kw={"height_ratios": [4, 1]}, sharex=True)
    ticks = list(range(0, horizon + 1, 60))
    groups = list(dict.fromkeys(curves["group"]))
    for colour, group in zip(COLOURS, groups, strict=False):  # more colours than groups
        c = curves[curves["group"] == group].sort_values("time_days")
        x = np.concatenate(([0], c["time_days"].to_numpy()))
        y = np.concatenate(([1.0], c["survival"].to_numpy()))
        lo = np.concatenate(([1.0], c["ci_lower"].fillna(1.0).to_numpy()))
        hi = np.concatenate(([1.0], c["ci_upper"].fillna(1.0).to_numpy()))
        ax.step(x, y, where="post", color=colour, label=group)
        ax.fill_between(x, lo, hi, step="post", color=colour, alpha=0.15)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(label)
    ax.set_title(title)
    notes = []
    if hazard_ratio and not np.isnan(hazard_ratio[0]):
        notes.append(f"HR {hazard_ratio[0]:.2f} ({hazard_ratio[1]:.2f}-{hazard_ratio[2]:.2f})")
    if logrank_p is not None and not np.isnan(logrank_p):
        notes.append(f"log-rank p = {logrank_p:.4f}")
    if notes:
        ax.text(0.02, 0.05, "\n".join(notes), transform=ax.transAxes)
    ax.legend(loc="lower right")
    table.set_xlim(-0.06 * horizon, horizon * 1.04)  # room for the day-0 counts beside the group names
    table.set_xticks(ticks)
    table.set_yticks(range(len(groups)))
    table.set_yticklabels(groups)
    table.set_ylim(-0.5, len(groups) - 0.5)
    for row, group in enumerate(groups):
        c = curves[curves["group"] == group].sort_values("time_days")
        for day in ticks:
            table.text(day, row, f"{_at(c, day, 'n_at_risk'):.0f}", ha="center", va="center", fontsize=8)
    table.set_xlabel(f"Days since index (numbers at risk{', weighted' if weighted else ''})")
    for spine in table.spines.values():
        spine.set_visible(False)
    return to_bytes(fig, fmt)


def love_plot(balance: pd.DataFrame, title: str, fmt: str = "png") -> bytes:
    b = balance.iloc[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(b) + 1.2))
    ax.scatter(b["smd_unweighted"].abs(), b["covariate"], marker="o", facecolors="none", edgecolors="grey",
               label="unweighted")
    ax.scatter(b["smd_weighted"].abs(), b["covariate"], marker="o", color=COLOURS[0], label="IPTW")
    ax.axvline(BALANCE_THRESHOLD, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("|standardized mean difference|")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return to_bytes(fig, fmt)


def ps_overlap(ps: pd.Series, treated: pd.Series, title: str, fmt: str = "png") -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 26)
    ax.hist(ps[treated], bins=bins, alpha=0.6, color=COLOURS[0], label="tacrolimus")
    ax.hist(ps[~treated], bins=bins, alpha=0.6, color=COLOURS[1], label="comparator")
    ax.set_xlabel("propensity score")
    ax.set_ylabel("patients")
    ax.set_title(title)
    ax.legend()
    return to_bytes(fig, fmt)


def scale_boxplots(visits: pd.DataFrame, scales: list[str], title: str, fmt: str = "png") -> bytes:
    """One small box plot per scale across the visits (the paper's Figure 2)."""
    cols = 4
    rows = int(np.ceil(len(scales) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, scale in zip(axes.flat, scales, strict=False):  # the grid may have spare axes
        s = visits[visits["measure"] == scale]
        months = sorted(s["visit_month"].unique())
        ax.boxplot([s.loc[s["visit_month"] == m, "value"].to_numpy() for m in months], showfliers=False)
        ax.set_xticks(range(1, len(months) + 1))
        ax.set_xticklabels([f"M{m}" for m in months], fontsize=8)
        ax.set_title(scale, fontsize=9)
    for ax in list(axes.flat)[len(scales):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return to_bytes(fig, fmt)
