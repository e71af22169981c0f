"""The report's content, section by section in the paper's order, as plain data for the templates:
rows of ``Cell``s (each number with its warehouse source) and SVG figures. Pure: tables in, no I/O.
Long on purpose: one method per section of the paper, in the paper's order, so the report reads like it."""
from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from analytics.balance import BALANCE_THRESHOLD, kish_ess
from analytics.cohort.prospective import ProspectiveParams
from analytics.figures import km_plot, love_plot, ps_overlap, scale_boxplots

from . import cells, figures
from . import labels as L
from .cells import Cell
from .published import PublishedItem, agreement, reproduce
from .suppression import Mark, SmallCellPolicy

RETRO = "retrospective"
MAIN = "tacrolimus_vs_conventional"
PROSPECTIVE_COMPARISON = "combination_vs_tacrolimus"
ANALYSIS_ORDER = ("primary", "stabilized", "truncated_1_99", "bootstrap")
OUTCOME_ORDER = ("death", "relapse", "resp_relapse")
COUNT_IN_SUMMARY = re.compile(r"^(\d+) \(")


@dataclass
class Figure:
    id: str
    title: str
    svg: bytes
    caption: list[Any] = field(default_factory=list)  # text and Cells

    @property
    def data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.svg).decode()


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]  # str (a label) or Cell
    group_rows: set[int] = field(default_factory=set)  # rows that head a block (a categorical variable)


def _eff_src(row: Mapping[str, Any], column: str) -> dict[str, Any]:
    return cells.source("effect_estimates", column, {k: row[k] for k in ("analysis", "comparison", "outcome")})


def _counts_of(row: Mapping[str, Any], policy: SmallCellPolicy, arm: str) -> tuple[Cell, Cell]:
    """Events and patients of one arm of an effect row: the events are the partition [events, n − events]."""
    n, events = int(row[f"n_{arm}"]), int(row[f"events_{arm}"])
    n_mark = policy.count(n)
    e_mark = Mark.PRIMARY if n_mark else policy.partition([events], hidden_remainder=n - events)[0]
    return cells.count(events, _eff_src(row, f"events_{arm}"), policy, e_mark), cells.count(n, _eff_src(row, f"n_{arm}"), policy)


def _hides_something(part: Any) -> bool:
    if isinstance(part, Cell):
        return "data-suppressed" in part.attrs
    return isinstance(part, list) and any(_hides_something(p) for p in part)


def json_get(value: Any, path: list[Any]) -> Any:
    """``value`` (JSON text) followed along ``path``; None where the path does not exist (an older provenance row)."""
    for key in path:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


class ReportBuilder:
    """Builds every section from the warehouse tables; one instance per report."""

    def __init__(self, tables: Mapping[str, pd.DataFrame], policy: SmallCellPolicy,
                 published: tuple[PublishedItem, ...]) -> None:
        self.t = tables
        self.policy = policy
        self.published = published
        self.effects = tables["effect_estimates"]
        self._provenance: dict[str, Any] | None = None

    # ------------------------------------------------------------------ helpers
    def effect_row(self, comparison: str, outcome: str, analysis: str = "primary") -> pd.Series | None:
        e = self.effects
        match = e[(e["comparison"] == comparison) & (e["outcome"] == outcome) & (e["analysis"] == analysis)]
        return match.iloc[0] if len(match) else None

    def effect_cells(self, row: pd.Series) -> dict[str, Cell]:
        out = {c: cells.number(row[c], _eff_src(row, c), 3) for c in ("hazard_ratio", "ci_lower", "ci_upper")}
        out.update({c: cells.p_value(row[c], _eff_src(row, c)) for c in ("p_value", "logrank_p")})
        out["events_treated"], out["n_treated"] = _counts_of(row, self.policy, "treated")
        out["events_control"], out["n_control"] = _counts_of(row, self.policy, "control")
        return out

    @staticmethod
    def hr_ci(c: Mapping[str, Cell]) -> list[Any]:
        """HR (lower–upper), or "not estimable" (a group without events) still carrying the HR's source."""
        if c["hazard_ratio"].text == cells.MISSING:
            return [Cell("not estimable", c["hazard_ratio"].attrs, "na")]
        return [c["hazard_ratio"], " (", c["ci_lower"], "–", c["ci_upper"], ")"]

    def groups_of(self, comparison: str) -> tuple[str, str]:
        if comparison == PROSPECTIVE_COMPARISON:
            return "combination", "tacrolimus"
        agent = comparison.split("_vs_")[1]
        return "tacrolimus", agent

    def km_figure(self, fig_id: str, title: str, comparison: str, outcome: str) -> Figure | None:
        curves = self.t["survival_curves"]
        c = curves[(curves["comparison"] == comparison) & (curves["outcome"] == outcome) & (curves["analysis"] == "primary")]
        row = self.effect_row(comparison, outcome)
        if c.empty or row is None:
            return None
        c = c.assign(group=c["group"].map(lambda g: L.label(L.GROUPS, g)))
        svg = km_plot(c, title, label=L.KM_AXIS[outcome], logrank_p=row["logrank_p"],
                      hazard_ratio=(row["hazard_ratio"], row["ci_lower"], row["ci_upper"]),
                      weighted=comparison != PROSPECTIVE_COMPARISON, fmt="svg")
        e = self.effect_cells(row)
        treated, control = (L.label(L.GROUPS, g) for g in self.groups_of(comparison))
        weighted = "IPTW-weighted " if comparison != PROSPECTIVE_COMPARISON else ""
        caption = [f"{treated}: ", e["events_treated"], " events of ", e["n_treated"], f"; {control}: ",
                   e["events_control"], " events of ", e["n_control"], f". {weighted}HR (", cells.fixed("95%"), " CI) ",
                   self.hr_ci(e), ", p ", e["p_value"], "; log-rank p ", e["logrank_p"], "."]
        return Figure(fig_id, title, svg, caption)

    # ------------------------------------------------------------------ provenance and methods
    def provenance(self) -> dict[str, Any]:
        """The latest provenance row of each table the report reads (as the current_provenance view)."""
        if self._provenance is None:
            p = self.t["provenance"]
            latest = p.sort_values("computed_at").groupby("table_name").tail(1).set_index("table_name")
            self._provenance = {name: latest.loc[name] for name in latest.index}
        return self._provenance

    def prov_cell(self, table_name: str, column: str, json_path: list[str] | None = None, decimals: int | None = None) -> Cell:
        row = self.provenance().get(table_name)
        if row is None:  # no provenance recorded for that table: nothing to point at
            return Cell(cells.MISSING, {}, "na")
        src = cells.source("provenance", column, {"table_name": table_name, "run_id": row["run_id"]},
                           json=json_path)
        value = json_get(row[column], json_path or [])
        if decimals is not None:
            return cells.number(value, src, decimals)
        return cells.text(value, src)

    def methods(self) -> dict[str, Any]:
        def rule(name: str) -> Cell:
            return self.prov_cell("cohort", "parameters", ["contract_parameters", name])

        def effects(name: str) -> Cell:
            return self.prov_cell("effect_estimates", "parameters", [name])

        params = json.loads(self.provenance()["cohort"]["parameters"]) if "cohort" in self.provenance() else {}
        recorded = params.get("prospective_parameters")
        pp = recorded or asdict(ProspectiveParams(rules=None))  # type: ignore[arg-type]
        if recorded:
            def prosp(name: str, i: int | None = None) -> Cell:
                return self.prov_cell("cohort", "parameters", ["prospective_parameters", name] + ([i] if i is not None else []))
        else:  # not recorded by this pipeline version: the code's defaults, said as such
            def prosp(name: str, i: int | None = None) -> Cell:
                value = pp[name] if i is None else pp[name][i]
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                return cells.fixed(value.isoformat() if hasattr(value, "isoformat") else str(value))
        retro = [
            "Retrospective cohort. Adults (age ≥ ", rule("min_age"), " at index) with an IIM and an ILD diagnosis and "
            "an index date between ", rule("window_start"), " and ", rule("window_end"), "; the index is the first "
            "immunosuppressant started on or after the first ILD diagnosis minus ", rule("ild_lookback_days"),
            " days with a glucocorticoid within ±", rule("gc_at_index_days"), " days. Malignancy within ",
            rule("malignancy_days"), " days of the first IIM diagnosis excludes. Follow-up runs from the day after index to day ",
            rule("followup_days"), ", censored at the last contact and at the data cut-off (", rule("data_cutoff"),
            "). Relapse: a symptom exacerbation with, within ±", rule("relapse_window_days"), " days, ferritin or ESR "
            "above ", rule("lab_fold"), "× baseline (the value closest to index within −", rule("baseline_before_days"),
            " … +", rule("baseline_after_days"), " days), radiological progression, or a glucocorticoid increase above ",
            rule("gc_increase_mg_per_kg"), " mg/kg/day. Plasma exchange and IVIg count within ±",
            rule("covariate_window_days"), " days of index.",
        ]
        weighting = [
            "Weighting and effects. A logistic propensity model on age, sex, diagnosis subset, initial "
            "prednisolone-equivalent dose, plasma exchange and IVIg, refit within each pair of groups; weights ",
            cells.fixed("1/ps"), " for tacrolimus and ", cells.fixed("1/(1 − ps)"), " for the comparator (the paper's "
            "method, analysis “primary”). Sensitivity "
            "analyses: stabilized weights; weights truncated at the ", effects("ps_truncation"), "; and a "
            "propensity-score-refit bootstrap of the primary comparison with ", effects("bootstrap_replicates"),
            " replicates (seed ", effects("seed"), "). Hazard ratios from weighted Cox models (Efron ties) with "
            "robust (sandwich) ", cells.fixed("95%"), " confidence intervals and robust Wald p; the IPTW-adjusted "
            "log-rank test of Xie and Liu; weighted Kaplan-Meier curves with robust log-log ", cells.fixed("95%"),
            " intervals and weighted numbers at risk. The prospective comparison is unweighted (model-based Cox "
            "standard errors, the classical log-rank test, Greenwood intervals).",
        ]
        prospective = [
            "Prospective cohort. Participants of the registered study enrolled between ", prosp("enrolment_start"),
            " and ", prosp("enrolment_end"), " and treated with tacrolimus; the combination group started pirfenidone at ",
            prosp("pirfenidone_low_mg_day", 0), "–", prosp("pirfenidone_low_mg_day", 1), " mg/day within ",
            prosp("pirfenidone_start_max_days"), " days of the tacrolimus start. Scales at each visit: paired "
            "Wilcoxon test against baseline with Bonferroni correction over the follow-up visits; between the groups, "
            "the Mann-Whitney test on the change from baseline. HRCT: survivors with a baseline and a month-",
            cells.fixed("12"), " score. Baseline tables: mean ± SD and Welch's t-test when both groups pass "
            "Shapiro-Wilk (p > ", cells.fixed("0.05"), "), else median [IQR] and the Mann-Whitney test; n (%) with "
            "the chi-square test, or Fisher's exact test for a ", cells.fixed("2×2"), " table with an expected count below ",
            cells.fixed("5"), ". Adverse events: Fisher's exact test.",
        ]
        if not recorded:
            prospective.append(" (The prospective settings are this code version's defaults; the pipeline does not "
                               "record them in its provenance yet.)")
        produced = [
            "What produced this report. Code version ", self.prov_cell("effect_estimates", "git_commit"), " (package ",
            self.prov_cell("effect_estimates", "package_version"), "); concept map ", cells.fixed("SHA-256"), " ",
            self.prov_cell("cohort", "concept_map_sha256"), ". Cohort tables computed at ",
            self.prov_cell("cohort", "computed_at"), " UTC (run ", self.prov_cell("cohort", "run_id"),
            "), effect tables at ", self.prov_cell("effect_estimates", "computed_at"), " UTC (run ",
            self.prov_cell("effect_estimates", "run_id"), "), descriptive tables at ",
            self.prov_cell("baseline_characteristics", "computed_at"), " UTC (run ",
            self.prov_cell("baseline_characteristics", "run_id"), ").",
        ]
        return {"paragraphs": [retro, weighting, prospective, produced], "watermarks": self.watermarks()}

    def watermarks(self) -> Table:
        row = self.provenance().get("cohort")
        marks = json.loads(row["data_watermarks"]) if row is not None else {}
        rows = []
        for rtype in sorted(marks):
            def wm(key: str, rtype: str = rtype) -> Cell:
                return self.prov_cell("cohort", "data_watermarks", [rtype, key])
            rows.append([rtype, wm("mode"), wm("watermark"), wm("checked_at")])
        return Table(["FHIR resource type", "sync mode", "watermark (server time)", "checked at"], rows)

    # ------------------------------------------------------------------ flowcharts
    def flowchart(self, fig_id: str, cohort: str, title: str, comparison: str) -> Figure:
        a = self.t["cohort_attrition"]
        a = a[a["cohort"] == cohort]
        row = self.effect_row(comparison, "death")
        treated, control = self.groups_of(comparison)
        groups = [(L.label(L.GROUPS, treated), int(row["n_treated"]) if row is not None else 0),
                  (L.label(L.GROUPS, control), int(row["n_control"]) if row is not None else 0)]
        start = "Patients in the warehouse" if cohort == RETRO else "Patients enrolled in the study"
        return Figure(fig_id, title, figures.attrition_flowchart(a, L.ATTRITION, start, groups, title))

    # ------------------------------------------------------------------ Tables 1 and 2
    def baseline_table(self, cohort: str, groups: tuple[str, str]) -> Table:
        b = self.t["baseline_characteristics"]
        b = b[b["cohort"] == cohort]

        def src(r: pd.Series, column: str) -> dict[str, Any]:
            return cells.source("baseline_characteristics", column,
                                {"cohort": cohort, "variable": r["variable"], "level": r["level"], "group": r["group"]})

        n_rows = b[b["variable"] == "n"].set_index("group")
        n = {g: int(n_rows.loc[g, "summary"]) if g in n_rows.index else 0 for g in groups}
        small_group = {g: self.policy.count(n[g]) is not None for g in groups}

        def n_src(g: str) -> dict[str, Any]:
            return cells.source("baseline_characteristics", "summary",
                                {"cohort": cohort, "variable": "n", "level": None, "group": g})

        header = ["", *(L.label(L.GROUPS, g) for g in groups), "p", "test", "SMD"]
        rows: list[list[Any]] = [[L.VARIABLES["n"], *(cells.count(n[g], n_src(g), self.policy) for g in groups), "", "", ""]]
        block_rows: set[int] = set()
        for variable in dict.fromkeys(b["variable"]):
            if variable == "n":
                continue
            v = b[b["variable"] == variable]
            first = v.iloc[0]
            if v["level"].isna().all():  # continuous: one row
                by_group = v.set_index("group")
                row: list[Any] = [L.label(L.VARIABLES, variable)]
                for g in groups:
                    if g not in by_group.index:
                        row.append(cells.MISSING)
                        continue
                    r = by_group.loc[g].copy()
                    r["group"] = g
                    row.append(self._summary(r, src, Mark.SMALL_GROUP if small_group[g] else None, n_src(g)))
                row += [cells.p_value(first["p_value"], src(first, "p_value")), L.label(L.TESTS, first["test"]),
                        cells.number(first["smd"], src(first, "smd"), 3)]
                rows.append(row)
                continue
            block_rows.add(len(rows))
            rows.append([L.label(L.VARIABLES, variable), "", "", cells.p_value(first["p_value"], src(first, "p_value")),
                         L.label(L.TESTS, first["test"]), ""])
            levels = list(dict.fromkeys(v["level"]))
            marks: dict[str, list[Mark | None]] = {}
            for g in groups:
                part = v[v["group"] == g].set_index("level").reindex(levels)
                counts = [self._count_in(s) for s in part["summary"]]
                marks[g] = ([Mark.SMALL_GROUP] * len(levels) if small_group[g]
                            else self.policy.partition(counts, hidden_remainder=n[g] - sum(counts)))
            for i, level in enumerate(levels):
                row = [f"  {L.label(L.LEVELS, level)}"]
                for g in groups:
                    r = v[(v["group"] == g) & (v["level"] == level)].iloc[0]
                    row.append(self._summary(r, src, marks[g][i], n_src(g)))
                r0 = v[v["level"] == level].iloc[0]
                smd = cells.number(r0["smd"], src(r0, "smd"), 3)
                if any(marks[g][i] is not None for g in groups):  # with the other group's share, it gives the count back
                    smd = cells.suppressed(smd, Mark.SECONDARY, self.policy)
                row += ["", "", smd]
                rows.append(row)
        return Table(header, rows, block_rows)

    @staticmethod
    def _count_in(summary: Any) -> int:
        match = COUNT_IN_SUMMARY.match(str(summary))
        if not match:
            raise ValueError(f"baseline_characteristics: a categorical summary is not 'n (x%)': {summary!r}")
        return int(match.group(1))

    def _summary(self, r: pd.Series, src: Any, mark: Mark | None, n_locator: dict[str, Any]) -> Cell:
        cell = cells.text(r["summary"], src(r, "summary"))
        if mark is None:
            return cell
        return cells.suppressed(cell, mark, self.policy, n_locator if mark is Mark.SMALL_GROUP else None)

    # ------------------------------------------------------------------ effects: forest plot and its table
    def forest(self) -> tuple[Figure, Table]:
        e = self.effects.copy()
        order = {c: i for i, c in enumerate(L.COMPARISONS)}
        e["_c"] = e["comparison"].map(order).fillna(len(order))
        e["_o"] = e["outcome"].map({o: i for i, o in enumerate(OUTCOME_ORDER)}).fillna(len(OUTCOME_ORDER))
        e["_a"] = e["analysis"].map({a: i for i, a in enumerate(ANALYSIS_ORDER)}).fillna(len(ANALYSIS_ORDER))
        e = e.sort_values(["_c", "_o", "_a"]).drop(columns=["_c", "_o", "_a"])
        marks = {}
        for item in self.published:
            if item.kind == "hr" and item.reproduced:
                w = item.reproduced["where"]
                marks[(w["comparison"], w["outcome"])] = float(item.published["hr"])
        svg = figures.forest_plot(e, marks, {**L.COMPARISONS, **L.OUTCOMES})
        rows = []
        for _, r in e.iterrows():
            c = self.effect_cells(r)
            rows.append([L.label(L.COMPARISONS, r["comparison"]), L.label(L.OUTCOMES, r["outcome"]),
                         L.label(L.ANALYSES, r["analysis"]), c["hazard_ratio"], c["ci_lower"], c["ci_upper"], c["p_value"],
                         c["logrank_p"], c["events_treated"], c["n_treated"], c["events_control"], c["n_control"]])
        header = ["comparison", "outcome", "analysis", "HR", "CI lower", "CI upper", "p", "log-rank p",
                  "events (first group)", "n (first group)", "events (second group)", "n (second group)"]
        caption = ["Squares: the paper's method; grey: sensitivity analyses; red crosses: the hazard ratios the paper "
                   "publishes (", cells.label("Figures 1A and 1B"), "). Bootstrap rows have the primary point estimate and "
                   "percentile intervals."]
        return Figure("forest-plot", "Hazard ratios of every comparison, outcome and analysis", svg, caption), Table(header, rows)

    # ------------------------------------------------------------------ propensity diagnostics
    def diagnostics(self) -> dict[str, Any]:
        w = self.t["iptw_weights"]
        cohort = self.t["cohort"][["patient_key", "group"]]
        join = {"table": "cohort", "on": "patient_key", "columns": ["group"]}
        weights = w.merge(cohort, on="patient_key", how="left")
        rows = []
        for comparison in dict.fromkeys(weights["analysis"]):
            wc = weights[weights["analysis"] == comparison]
            for group in ("tacrolimus", "conventional"):
                arm = wc[wc["group"] == group]["weight"]
                where = {"analysis": comparison, "group": group}

                def agg(name: str, decimals: int, values: pd.Series = arm, where: dict = where) -> Cell:
                    src = cells.source("iptw_weights", "weight", where, agg=name, join=join)
                    value = {"ess": kish_ess, "min": pd.Series.min, "median": pd.Series.median,
                             "max": pd.Series.max}[name](values) if len(values) else np.nan
                    return cells.number(value, src, decimals)
                control = L.label(L.GROUPS, self.groups_of(comparison)[1]) if group == "conventional" else "Tacrolimus"
                rows.append([L.label(L.COMPARISONS, comparison), control,
                             cells.count(len(arm), cells.source("iptw_weights", "weight", where, agg="count", join=join),
                                         self.policy),
                             agg("ess", 1), agg("min", 2), agg("median", 2), agg("max", 2)])
        weights_table = Table(["comparison", "arm", "n", "effective sample size (Kish)", "min weight", "median weight",
                               "max weight"], rows)
        balance = self.t["covariate_balance"]
        bal_rows = []
        for _, r in balance.iterrows():
            src = {c: cells.source("covariate_balance", c, {"analysis": r["analysis"], "covariate": r["covariate"]})
                   for c in ("smd_unweighted", "smd_weighted")}
            bal_rows.append([L.label(L.COMPARISONS, r["analysis"]), r["covariate"],
                             cells.number(r["smd_unweighted"], src["smd_unweighted"], 3),
                             cells.number(r["smd_weighted"], src["smd_weighted"], 3)])
        main = weights[weights["analysis"] == MAIN]
        figs = []
        if len(main):
            figs.append(Figure("love-plot", "Covariate balance (love plot), tacrolimus vs conventional",
                               love_plot(balance[balance["analysis"] == MAIN], "Covariate balance, tacrolimus vs conventional",
                                         fmt="svg"),
                               ["Absolute standardized mean differences before (open) and after (filled) weighting; "
                                "the dashed line is the usual balance threshold of ", cells.fixed(f"{BALANCE_THRESHOLD}"),
                                "."]))
            arms = main.assign(arm=main["group"].map(lambda g: L.label(L.GROUPS, g)))
            figs.append(Figure("weight-distribution", "IPTW weights, tacrolimus vs conventional",
                               figures.weight_distribution(arms, "IPTW weights, tacrolimus vs conventional")))
            figs.append(Figure("ps-overlap", "Propensity score overlap, tacrolimus vs conventional",
                               ps_overlap(main["propensity_score"].reset_index(drop=True),
                                          main["group"].eq("tacrolimus").reset_index(drop=True),
                                          "Propensity score overlap, tacrolimus vs conventional", fmt="svg")))
        return {"figures": figs, "weights": weights_table,
                "balance": Table(["comparison", "covariate", "SMD unweighted", "SMD weighted"], bal_rows)}

    # ------------------------------------------------------------------ prospective scales and HRCT
    def scale_table(self, groups: tuple[str, ...], scales: tuple[str, ...], between: bool) -> Table:
        s = self.t["scale_changes"]
        rows = []
        for scale in scales:
            part = s[s["scale"] == scale]
            for month in sorted(part["visit_month"].unique()):
                row: list[Any] = [L.label(L.SCALES, scale), f"M{month}"]
                for g in groups:
                    r = part[(part["group"] == g) & (part["visit_month"] == month)]
                    if r.empty:
                        row += [cells.MISSING] * (3 if between else 4)
                        continue
                    r = r.iloc[0]
                    key = {"scale": scale, "group": g, "visit_month": int(month)}

                    def src(c: str, key: dict = key) -> dict[str, Any]:
                        return cells.source("scale_changes", c, key)
                    n_mark = self.policy.count(int(r["n"]))
                    row.append(cells.count(r["n"], src("n"), self.policy))
                    row.append(self._median_iqr(r, src, n_mark, ("median", "q1", "q3")))
                    if not between:
                        row.append(cells.p_value(r["p_vs_baseline"], src("p_vs_baseline")))
                        row.append(cells.p_value(r["p_adjusted"], src("p_adjusted")))
                if between:
                    r = part[(part["group"] == groups[0]) & (part["visit_month"] == month)]
                    row.append(cells.p_value(r.iloc[0]["p_between_groups"],
                                             cells.source("scale_changes", "p_between_groups",
                                                          {"scale": scale, "group": groups[0], "visit_month": int(month)}))
                               if len(r) else cells.MISSING)
                rows.append(row)
        header = ["scale", "visit"]
        for g in groups:
            header += [f"n ({L.label(L.GROUPS, g)})", f"median [IQR] ({L.label(L.GROUPS, g)})"]
            if not between:
                header += ["p vs baseline", "p (Bonferroni)"]
        if between:
            header.append("p, change between groups")
        return Table(header, rows)

    def _median_iqr(self, r: pd.Series, src: Any, mark: Mark | None, columns: tuple[str, str, str]) -> list[Any] | Cell:
        if mark is not None:
            return cells.suppressed(cells.text(r[columns[0]], src(columns[0])), Mark.SMALL_GROUP, self.policy, src("n"))
        return [cells.number(r[columns[0]], src(columns[0]), 1), " [", cells.number(r[columns[1]], src(columns[1]), 1),
                "–", cells.number(r[columns[2]], src(columns[2]), 1), "]"]

    def hrct_table(self, groups: tuple[str, str]) -> Table:
        h = self.t["hrct_changes"]
        rows = []
        for measure in dict.fromkeys(h["measure"]):
            m = h[h["measure"] == measure]
            row: list[Any] = [L.label(L.HRCT, measure)]
            for g in groups:
                r = m[m["group"] == g]
                if r.empty:
                    row += [cells.MISSING] * 4
                    continue
                r = r.iloc[0]

                def src(c: str, g: str = g, measure: str = measure) -> dict[str, Any]:
                    return cells.source("hrct_changes", c, {"measure": measure, "group": g})
                mark = self.policy.count(int(r["n"]))
                row.append(cells.count(r["n"], src("n"), self.policy))
                for c in ("baseline_median", "month12_median"):
                    row.append(cells.suppressed(cells.text(r[c], src(c)), Mark.SMALL_GROUP, self.policy, src("n"))
                               if mark else cells.number(r[c], src(c), 1))
                row.append(cells.p_value(r["p_within"], src("p_within")))
            first = m.iloc[0]
            row.append(cells.p_value(first["p_between_delta"], cells.source(
                "hrct_changes", "p_between_delta", {"measure": measure, "group": first["group"]})))
            rows.append(row)
        header = ["measure"]
        for g in groups:
            name = L.label(L.GROUPS, g)
            header += [f"n ({name})", f"baseline median ({name})", f"month-12 median ({name})", f"p within ({name})"]
        header.append("p, change between groups")
        return Table(header, rows)

    # ------------------------------------------------------------------ safety
    def safety_table(self, cohort: str, groups: tuple[str, str]) -> Table:
        s = self.t["safety_summary"]
        s = s[s["cohort"] == cohort]
        rows = []
        for category in dict.fromkeys(s["category"]):
            c = s[s["category"] == category]
            row: list[Any] = [L.label(L.AE_CATEGORIES, category)]
            first = None
            hidden = False  # a hidden count hides the row's p and odds ratio too: either gives it back
            for g in groups:
                r = c[c["group"] == g]
                if r.empty:
                    row += [cells.MISSING] * 3
                    continue
                r = r.iloc[0]
                first = first if first is not None else r

                def src(col: str, g: str = g, category: str = category) -> dict[str, Any]:
                    return cells.source("safety_summary", col, {"cohort": cohort, "group": g, "category": category})
                k, n = int(r["n_patients_with_event"]), int(r["n_patients"])
                mark = Mark.PRIMARY if self.policy.count(n) else self.policy.partition([k], hidden_remainder=n - k)[0]
                hidden = hidden or mark is not None
                row += [[cells.count(k, src("n_patients_with_event"), self.policy, mark), " / ",
                         cells.count(n, src("n_patients"), self.policy)],
                        cells.percent(r["percent"], src("percent"), mark, self.policy),
                        cells.count(r["serious_events"], src("serious_events"), self.policy)]
            if first is not None:
                fsrc = {"cohort": cohort, "group": first["group"], "category": category}
                p_cell = cells.p_value(first["p_value"], cells.source("safety_summary", "p_value", fsrc))
                or_cell = cells.number(first["odds_ratio"], cells.source("safety_summary", "odds_ratio", fsrc), 2)
                if hidden:
                    p_cell, or_cell = (cells.suppressed(x, Mark.SECONDARY, self.policy) for x in (p_cell, or_cell))
                row += [p_cell, or_cell]
            rows.append(row)
        header = ["category"]
        for g in groups:
            name = L.label(L.GROUPS, g)
            header += [f"patients with events / n ({name})", f"% ({name})", f"serious events ({name})"]
        header += ["p (Fisher)", "odds ratio"]
        return Table(header, rows)

    # ------------------------------------------------------------------ published vs reproduced
    def published_table(self) -> Table:
        rows = []
        for item in self.published:
            got = reproduce(item, self.t)
            available = bool(got) and "missing" not in got
            pub = item.published
            rep: Any = cells.MISSING
            if item.kind == "hr":
                shown_pub: Any = [cells.published(pub["hr"], item.id, "hr"), " (", cells.published(pub["lower"], item.id, "lower"),
                                  "–", cells.published(pub["upper"], item.id, "upper"), ")"]
                if available:
                    rep = self.hr_ci({"hazard_ratio": cells.number(*got["hr"], 3), "ci_lower": cells.number(*got["lower"], 3),
                                      "ci_upper": cells.number(*got["upper"], 3)})
            elif item.kind == "proportion":
                shown_pub = [cells.published(pub["k"], item.id, "k"), " / ", cells.published(pub["n"], item.id, "n")]
                if "percent" in pub:
                    shown_pub += [" (", cells.published(pub["percent"], item.id, "percent"), "%)"]
                if available:
                    rep = self._proportion(got)
            else:
                shown_pub = cells.published(pub["value"], item.id, "value")
                if available:
                    value, loc = got["value"]
                    if item.kind == "count":
                        rep = cells.count(value, loc, self.policy)
                    elif item.kind == "p":
                        rep = cells.p_value(value, loc)
                    else:
                        rep = cells.number(value, loc, 1)
            verdict = agreement(item, {k: v[0] for k, v in got.items()})
            if _hides_something(rep):  # "equal" beside "<5" would print the hidden count
                verdict = "not shown (small count)"
            note = cells.published(item.note, item.id, "note") if item.note else ""
            rows.append([cells.published(item.section, item.id, "section"), cells.published(item.what, item.id, "what"),
                         shown_pub, rep, verdict, note])
        return Table(["paper section", "what", "published", "reproduced", "agreement", "note"], rows)

    def _proportion(self, got: dict[str, tuple[Any, dict]]) -> list[Any]:
        (k, kloc), (n, nloc) = got["k"], got["n"]
        n_mark = self.policy.count(int(n))
        mark = Mark.PRIMARY if n_mark else self.policy.partition([int(k)], hidden_remainder=int(n) - int(k))[0]
        pct = 100 * float(k) / float(n) if float(n) else np.nan
        return [cells.count(k, kloc, self.policy, mark), " / ", cells.count(n, nloc, self.policy), " (",
                cells.percent(pct, {"ratio": {"numerator": kloc, "denominator": nloc}}, mark, self.policy), "%)"]

    # ------------------------------------------------------------------ headline (the first page)
    def headline(self) -> Table:
        rows = []
        for comparison, outcome in ((MAIN, "death"), (MAIN, "relapse"), (PROSPECTIVE_COMPARISON, "resp_relapse")):
            r = self.effect_row(comparison, outcome)
            if r is None:
                continue
            c = self.effect_cells(r)
            rows.append([L.label(L.COMPARISONS, comparison), L.label(L.OUTCOMES, outcome),
                         [c["events_treated"], " / ", c["n_treated"]], [c["events_control"], " / ", c["n_control"]],
                         self.hr_ci(c), c["p_value"], c["logrank_p"]])
        return Table(["comparison", "outcome", "events / n (first group)", "events / n (second group)",
                      "HR (95% CI)", "p", "log-rank p"], rows)


def figure_2_svg(visits: pd.DataFrame | None) -> bytes | None:
    if visits is None or visits.empty:
        return None
    named = visits[visits["measure"].isin(L.FIGURE_2_SCALES)]
    named = named.assign(measure=named["measure"].map(lambda m: L.label(L.SCALES, m)))
    return scale_boxplots(named, [L.label(L.SCALES, m) for m in L.FIGURE_2_SCALES],
                          "Assessment scales by visit, prospective cohort", fmt="svg")


def figure_2(builder: ReportBuilder, svg: bytes | None = None) -> Figure | None:
    """Figure 2 around its drawing (``figure_2_svg``), drawn here unless given."""
    svg = svg if svg is not None else figure_2_svg(builder.t.get("prospective_visits"))
    if svg is None:
        return None
    return Figure("figure-2-plot", "Assessment scales by visit (both groups)", svg,
                  ["Boxes: quartiles; whiskers: minimum and maximum (patient-level values: review before "
                   "release); months from the tacrolimus start."])
