"""The descriptive and prospective result tables: assessment-scale changes, HRCT changes, safety
summary and baseline characteristics (Tables 1 and 2, Figures 2-4, Supplementary Table 1)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import rtests
from .catalog import columns_of

SCALE_MEASURES = ("6mwt", "mmrc", "patient_global_activity", "mmt8", "myoact", "mitax", "mdi", "cat", "hama", "hamd",
                  "gc_pred_mg_day")
HRCT_MEASURES = ("hrct_score", "hrct_ground_glass", "hrct_consolidation", "hrct_reticular", "hrct_traction_bronchiectasis")
SCALE_COLUMNS = columns_of("scale_changes")  # column orders are the catalog's (analytics.catalog)
HRCT_COLUMNS = columns_of("hrct_changes")
SAFETY_COLUMNS = columns_of("safety_summary")
BASELINE_COLUMNS = columns_of("baseline_characteristics")
PROSPECTIVE_GROUPS = ("combination", "tacrolimus")


def _wide(visits: pd.DataFrame, measure: str) -> pd.DataFrame:
    """patient_key x visit_month values of one measure."""
    m = visits[visits["measure"] == measure]
    return m.pivot_table(index="patient_key", columns="visit_month", values="value", aggfunc="first")


def scale_changes(cohort: pd.DataFrame, visits: pd.DataFrame) -> pd.DataFrame:
    """Each scale at each visit: median [IQR], paired Wilcoxon vs baseline (patients with both), Bonferroni
    over the post-baseline visits of that scale and group; and a Mann-Whitney between the groups' changes
    from baseline."""
    groups = {"all": cohort["patient_key"], **{g: cohort.loc[cohort["group"] == g, "patient_key"] for g in PROSPECTIVE_GROUPS}}
    rows: list[dict[str, Any]] = []
    for scale in SCALE_MEASURES:
        wide = _wide(visits, scale)
        months = sorted(wide.columns) if len(wide) else []
        follow_ups = [m for m in months if m != 0]
        deltas = {}
        for group, keys in groups.items():
            g = wide.reindex(keys.tolist())
            for month in months:
                values = g[month].dropna()
                med, q1, q3 = rtests.quantiles(values)
                p = p_adj = float("nan")
                if month != 0 and 0 in g.columns:
                    pair = g[[0, month]].dropna()
                    p = rtests.wilcoxon_paired(pair[0], pair[month]) if len(pair) else float("nan")
                    p_adj = min(1.0, p * len(follow_ups)) if not np.isnan(p) else float("nan")
                    deltas[(group, month)] = (pair[month] - pair[0]).to_numpy()
                rows.append({"scale": scale, "group": group, "visit_month": month, "n": int(len(values)), "median": med,
                             "q1": q1, "q3": q3, "p_vs_baseline": p, "p_adjusted": p_adj})
        for row in rows:
            if row["scale"] == scale and row["group"] in PROSPECTIVE_GROUPS and row["visit_month"] != 0:
                a, b = deltas.get(("combination", row["visit_month"])), deltas.get(("tacrolimus", row["visit_month"]))
                row["p_between_groups"] = rtests.mann_whitney(a, b) if a is not None and b is not None else float("nan")
    return pd.DataFrame(rows, columns=SCALE_COLUMNS)


def hrct_changes(cohort: pd.DataFrame, visits: pd.DataFrame) -> pd.DataFrame:
    """Survivors with a baseline and a 12-month score: medians, paired Wilcoxon within each group, and a
    Mann-Whitney between the groups' changes (the paper's Figure 4)."""
    analysable = cohort[cohort["hrct_analysable"] == 1]
    rows: list[dict[str, Any]] = []
    for measure in HRCT_MEASURES:
        wide = _wide(visits, measure)
        deltas, part = {}, []
        for group in PROSPECTIVE_GROUPS:
            keys = analysable.loc[analysable["group"] == group, "patient_key"].tolist()
            g = wide.reindex(keys)
            pair = g[[0, 12]].dropna() if {0, 12} <= set(g.columns) else pd.DataFrame(columns=[0, 12])
            deltas[group] = (pair[12] - pair[0]).to_numpy()
            part.append({"measure": measure, "group": group, "n": int(len(pair)),
                         "baseline_median": rtests.quantiles(pair[0])[0], "month12_median": rtests.quantiles(pair[12])[0],
                         "p_within": rtests.wilcoxon_paired(pair[0], pair[12]) if len(pair) else float("nan")})
        p_between = rtests.mann_whitney(deltas["combination"], deltas["tacrolimus"])
        rows += [{**r, "p_between_delta": p_between} for r in part]
    return pd.DataFrame(rows, columns=HRCT_COLUMNS)


def safety_summary(cohort_name: str, cohort: pd.DataFrame, events: pd.DataFrame, groups: tuple[str, str],
                   categories: list[str]) -> pd.DataFrame:
    """Patients with at least one event per category and group, serious events (counted as events, each once), and
    Fisher's exact test between the two groups on patients with vs without the event."""
    if "event_number" not in events.columns or events["event_number"].isna().any():
        raise ValueError("safety_events has no event_number for some rows (a table written before it existed): "
                         "materialize the cohort asset again")
    n = cohort["group"].value_counts()
    ev = events[events["cohort"] == cohort_name]
    rows: list[dict[str, Any]] = []
    for category in ["any", *categories]:
        e = ev if category == "any" else ev[ev["category"] == category]
        with_event = e.groupby("group")["patient_key"].nunique()
        serious_rows = e[e["serious"] == 1]
        if category == "any":  # an event coded in two categories has a row in each: counted once here
            serious_rows = serious_rows.drop_duplicates(["cohort", "patient_key", "event_number"])
        serious = serious_rows.groupby("group").size()
        table = np.array([[with_event.get(g, 0), n.get(g, 0) - with_event.get(g, 0)] for g in groups])
        p, odds = rtests.fisher(table) if table.sum() else (float("nan"), float("nan"))
        for g in groups:
            k, total = int(with_event.get(g, 0)), int(n.get(g, 0))
            rows.append({"cohort": cohort_name, "group": g, "category": category, "n_patients_with_event": k,
                         "n_patients": total, "percent": 100 * k / total if total else float("nan"),
                         "serious_events": int(serious.get(g, 0)), "p_value": p, "odds_ratio": odds})
    return pd.DataFrame(rows, columns=SAFETY_COLUMNS)


def _continuous(cohort_name: str, variable: str, values: pd.Series, group: pd.Series, groups: tuple[str, str]) -> list[dict]:
    """Mean ± SD with Welch's t-test when both groups look normal (Shapiro-Wilk p > 0.05), else median
    [IQR] with the Mann-Whitney test; the SMD uses the pooled SD."""
    a, b = values[group == groups[0]].dropna(), values[group == groups[1]].dropna()
    normal = all(len(x) >= 3 and len(set(x)) > 2 and stats_normal(x) for x in (a, b))
    sd = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2) if len(a) > 1 and len(b) > 1 else float("nan")
    smd = (a.mean() - b.mean()) / sd if sd and not np.isnan(sd) else float("nan")
    if normal:
        p, test = rtests.welch_t(a, b), "welch_t"
        fmt = lambda x: f"{x.mean():.1f} ± {x.std(ddof=1):.1f}"  # noqa: E731
    else:
        p, test = rtests.mann_whitney(a, b), "mann_whitney"
        fmt = lambda x: "{:.1f} [{:.1f}-{:.1f}]".format(*rtests.quantiles(x)) if len(x) else "NA"  # noqa: E731
    return [{"cohort": cohort_name, "variable": variable, "level": None, "group": g, "summary": fmt(x), "p_value": p,
             "test": test, "smd": smd} for g, x in zip(groups, (a, b), strict=True)]


def stats_normal(x: pd.Series) -> bool:
    from scipy import stats

    return bool(stats.shapiro(x.to_numpy(dtype=float)).pvalue > 0.05)


def _categorical(cohort_name: str, variable: str, values: pd.Series, group: pd.Series, groups: tuple[str, str]) -> list[dict]:
    """n (%) per level; chi-square (Yates for 2x2) or Fisher's exact test when an expected count is below 5."""
    levels = sorted(values.dropna().unique().tolist(), key=str)
    table = np.array([[int(((values == lvl) & (group == g)).sum()) for g in groups] for lvl in levels])
    if table.shape[0] < 2:
        p, test = float("nan"), "none"
    elif table.shape == (2, 2) and (rtests.expected_counts(table) < 5).any():
        p, test = rtests.fisher(table)[0], "fisher"
    else:
        p, test = rtests.chi_square(table), "chi_square"
    rows = []
    totals = {g: int((group == g).sum()) for g in groups}
    for i, lvl in enumerate(levels):
        share = [table[i, j] / totals[g] if totals[g] else float("nan") for j, g in enumerate(groups)]
        pooled = np.mean([s * (1 - s) for s in share])
        smd = (share[0] - share[1]) / np.sqrt(pooled) if pooled > 0 else 0.0
        for j, g in enumerate(groups):
            rows.append({"cohort": cohort_name, "variable": variable, "level": str(lvl), "group": g,
                         "summary": f"{table[i, j]} ({100 * share[j]:.1f}%)", "p_value": p, "test": test, "smd": smd})
    return rows


def baseline_characteristics(cohort_name: str, cohort: pd.DataFrame, groups: tuple[str, str],
                             continuous: list[str], categorical: list[str]) -> pd.DataFrame:
    rows: list[dict] = []
    for variable in continuous:
        rows += _continuous(cohort_name, variable, cohort[variable].astype(float), cohort["group"], groups)
    for variable in categorical:
        rows += _categorical(cohort_name, variable, cohort[variable], cohort["group"], groups)
    for g in groups:
        rows.append({"cohort": cohort_name, "variable": "n", "level": None, "group": g,
                     "summary": str(int((cohort["group"] == g).sum())), "p_value": float("nan"), "test": "none",
                     "smd": float("nan")})
    return pd.DataFrame(rows, columns=BASELINE_COLUMNS)


BASELINE_LABS = ["ferritin", "esr", "crp", "creatine_kinase", "hrct_score"]


def prospective_with_baseline_labs(cohort: pd.DataFrame, visits: pd.DataFrame) -> pd.DataFrame:
    base = visits[(visits["visit_month"] == 0) & visits["measure"].isin(BASELINE_LABS)]
    wide = base.pivot_table(index="patient_key", columns="measure", values="value", aggfunc="first")
    return cohort.merge(wide.reindex(columns=BASELINE_LABS), left_on="patient_key", right_index=True, how="left")


def descriptive_tables(retro: pd.DataFrame, prosp: pd.DataFrame, visits: pd.DataFrame, events: pd.DataFrame,
                       categories: list[str]) -> dict[str, pd.DataFrame]:
    """Tables 1-2, the scale and HRCT changes (Figures 2-4) and the safety summary (Supplementary Table 1)."""
    return {
        "baseline_characteristics": pd.concat([
            baseline_characteristics("retrospective", retro, ("tacrolimus", "conventional"),
                                     ["age", "initial_pred_mg_day"], ["sex", "diagnosis_subset", "plasma_exchange", "ivig"]),
            baseline_characteristics("prospective", prospective_with_baseline_labs(prosp, visits),
                                     ("combination", "tacrolimus"), ["age", "initial_pred_mg_day", *BASELINE_LABS],
                                     ["sex", "diagnosis_subset", "anti_mda5", "plasma_exchange", "ivig"]),
        ], ignore_index=True),
        "scale_changes": scale_changes(prosp, visits),
        "hrct_changes": hrct_changes(prosp, visits),
        "safety_summary": pd.concat([
            safety_summary("retrospective", retro, events, ("tacrolimus", "conventional"), categories),
            safety_summary("prospective", prosp, events, ("combination", "tacrolimus"), categories),
        ], ignore_index=True),
    }

