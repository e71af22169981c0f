"""The report's section on the consortium's pooled results: the coordinator's ``pooled_effects`` (the exact
stratified IPTW Cox model), ``meta_analysis`` and ``site_heterogeneity``, with a forest plot per comparison ×
outcome (analytics/pooling/forest.py).

Rendered when the warehouse holds those tables: at the coordinator's warehouse, or at a hospital that also
coordinates (COORDINATOR_WAREHOUSE_URL = WAREHOUSE_URL). A site that only contributes never holds them, and its
report is unchanged. Every number is a Cell naming the coordinator table it comes from, like the rest of the
report; the tables hold aggregates only, so no small-cell rule applies here beyond the sites' own suppression.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from analytics.pooling.forest import forest_plot

from . import cells
from . import labels as L
from .inputs import POOLED_TABLES
from .sections import Figure, Table

SECTION_ID = "pooled"
_OUTCOME_ORDER = ("death", "relapse", "resp_relapse")


def _ordered(frame: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = list(dict.fromkeys(zip(frame["comparison"], frame["outcome"], strict=True)))
    rank_c = {c: i for i, c in enumerate(L.COMPARISONS)}
    rank_o = {o: i for i, o in enumerate(_OUTCOME_ORDER)}
    return sorted(pairs, key=lambda p: (rank_c.get(p[0], len(rank_c)), rank_o.get(p[1], len(rank_o)), p))


def _hr_ci(table: str, key: Mapping[str, Any], row: pd.Series, columns: tuple[str, str, str]) -> list[Any]:
    hr, lo, hi = (cells.number(row[c], cells.source(table, c, key), 2) for c in columns)
    return [hr, " (", lo, "–", hi, ")"]


def has_pooled_tables(tables: Mapping[str, pd.DataFrame]) -> bool:
    return all(name in tables for name in POOLED_TABLES) and not (tables["pooled_effects"].empty and tables["meta_analysis"].empty)


def pooled_section(tables: Mapping[str, pd.DataFrame]) -> dict[str, Any] | None:
    """The section's table and figures, or None when the warehouse holds no pooled results."""
    if not has_pooled_tables(tables):
        return None
    pooled, meta, het = tables["pooled_effects"], tables["meta_analysis"], tables["site_heterogeneity"]
    session, started = _latest(pooled)
    pooled = pooled[pooled["session_id"] == session] if session else pooled
    header = ["Comparison", "Outcome", "Sites", "Stratified Cox HR (95% CI)", "p", "Fixed-effect HR (95% CI)",
              "REML HR (95% CI)", "I² (%)", "τ²", "REML prediction interval"]
    rows, figures = [], []
    for comparison, outcome in _ordered(pd.concat([pooled[["comparison", "outcome"]], meta[["comparison", "outcome"]]])):
        row: list[Any] = [L.label(L.COMPARISONS, comparison), L.label(L.OUTCOMES, outcome)]
        p = pooled[(pooled["comparison"] == comparison) & (pooled["outcome"] == outcome)]
        key = {"session_id": session, "comparison": comparison, "outcome": outcome}
        if len(p) == 1 and p["status"].iloc[0] == "pooled":
            r = p.iloc[0]
            row += [cells.text(r["sites"], cells.source("pooled_effects", "sites", key)),
                    _hr_ci("pooled_effects", key, r, ("hazard_ratio", "ci_lower", "ci_upper")),
                    cells.p_value(r["p_value"], cells.source("pooled_effects", "p_value", key))]
        elif len(p) == 1:
            row += [cells.text(p["sites"].iloc[0], cells.source("pooled_effects", "sites", key)),
                    cells.text(p["reason"].iloc[0], cells.source("pooled_effects", "reason", key)), cells.MISSING]
        else:
            row += [cells.MISSING, "no pooling session", cells.MISSING]
        for method in ("FE", "REML"):
            m = meta[(meta["comparison"] == comparison) & (meta["outcome"] == outcome) & (meta["method"] == method)
                     & (meta["test"] == "z")]
            mkey = {"comparison": comparison, "outcome": outcome, "method": method, "test": "z"}
            if len(m) == 1 and not cells.is_missing(m["estimate"].iloc[0]):
                row.append(_hr_ci("meta_analysis", mkey, m.iloc[0], ("hazard_ratio", "hr_ci_lower", "hr_ci_upper")))
            else:
                row.append(cells.MISSING)
        m = meta[(meta["comparison"] == comparison) & (meta["outcome"] == outcome) & (meta["method"] == "REML")
                 & (meta["test"] == "z")]
        if len(m) == 1 and not cells.is_missing(m["estimate"].iloc[0]):
            r, mkey = m.iloc[0], {"comparison": comparison, "outcome": outcome, "method": "REML", "test": "z"}
            # The prediction interval is on the log scale in the table; the report prints the log HR bounds as stored.
            row += [cells.number(r["i2"], cells.source("meta_analysis", "i2", mkey), 1),
                    cells.number(r["tau2"], cells.source("meta_analysis", "tau2", mkey), 3),
                    [cells.number(r["pi_lower"], cells.source("meta_analysis", "pi_lower", mkey), 2), " to ",
                     cells.number(r["pi_upper"], cells.source("meta_analysis", "pi_upper", mkey), 2), " (log HR)"]]
        else:
            row += [cells.MISSING, cells.MISSING, cells.MISSING]
        rows.append(row)
        figure = _forest(het, p, comparison, outcome, key)
        if figure is not None:
            figures.append(figure)
    session_cell = (cells.text(session, cells.source("pooled_effects", "session_id", {"started_at": started}, agg="same"))
                    if session else cells.MISSING)
    return {"table": Table(header, rows), "figures": figures, "session": session_cell, "left_out": _left_out(pooled, session)}


def _latest(pooled: pd.DataFrame) -> tuple[str | None, str | None]:
    """The session begun last (by the coordinator's start time, not its id: ids are names a coordinator chooses) and
    its start time. A session recorded without a start time counts as older than any with one."""
    if not len(pooled):
        return None, None
    started = pooled["started_at"] if "started_at" in pooled else pd.Series(None, index=pooled.index, dtype=object)
    order = pd.DataFrame({"dated": started.notna(), "started": pd.to_datetime(started, utc=True, format="ISO8601"),
                          "session": pooled["session_id"].astype(str)}).sort_values(["dated", "started", "session"])
    last = order.index[-1]
    return str(pooled.at[last, "session_id"]), (None if pd.isna(started.at[last]) else str(started.at[last]))


def _left_out(pooled: pd.DataFrame, session: str | None) -> Any:
    """The sites the latest session left out, and why (one text per session, repeated on each of its rows)."""
    if "left_out" not in pooled or pooled["left_out"].isna().all():
        return None
    r = pooled[pooled["left_out"].notna()].iloc[0]
    key = {"session_id": session, "comparison": r["comparison"], "outcome": r["outcome"]}
    return cells.text(r["left_out"], cells.source("pooled_effects", "left_out", key))


def _forest(het: pd.DataFrame, pooled: pd.DataFrame, comparison: str, outcome: str, key: Mapping[str, Any]) -> Figure | None:
    h = het[(het["comparison"] == comparison) & (het["outcome"] == outcome)]
    if len(h) < 2:
        return None
    stratified = None
    if len(pooled) == 1 and pooled["status"].iloc[0] == "pooled":
        r = pooled.iloc[0]
        stratified = (float(r["hazard_ratio"]), float(r["ci_lower"]), float(r["ci_upper"]))
    title = f"{L.label(L.COMPARISONS, comparison)}: {L.label(L.OUTCOMES, outcome)}"
    svg = forest_plot(list(h["site_id"]), h["log_hr"], h["robust_se"], title, stratified=stratified, fmt="svg")
    caption: list[Any] = ["Each site's own IPTW estimate: "]
    for i, r in enumerate(h.itertuples(index=False)):
        where = {"comparison": comparison, "outcome": outcome, "site_id": r.site_id}
        caption += ["; " if i else "", cells.text(r.site_id, cells.source("site_heterogeneity", "site_id", where)), " log HR ",
                    cells.number(r.log_hr, cells.source("site_heterogeneity", "log_hr", where), 3), " (SE ",
                    cells.number(r.robust_se, cells.source("site_heterogeneity", "robust_se", where), 3), "), weight ",
                    cells.number(r.weight_re, cells.source("site_heterogeneity", "weight_re", where), 2), " in the REML pool"]
    caption.append(". Diamonds: the fixed-effect and REML pools and the exact stratified Cox model.")
    fig_id = f"pooled-forest-{comparison}-{outcome}".replace("_", "-").lower()
    return Figure(fig_id, title, svg, caption)

