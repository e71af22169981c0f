"""The site package: a versioned, signed JSON document of aggregates only, what a hospital shares with the
consortium about its IPTW analysis (site id, contract parameters and digest, group sizes, events, its own
primary estimates per comparison × outcome, covariate balance, attrition).

Built from the tables the pipeline already writes (``cohort``, ``cohort_attrition``, ``iptw_weights``,
``covariate_balance``); the site's own estimates are analytics.cox.fit_cox on the same weighted rows as its
``effect_estimates`` (log HR and robust SE, which the table shows only as HR and CI). Every count that could
identify a patient goes through small-cell suppression (federation/suppression.py), including cells a
published sum would give back; estimates and balance of a comparison with an arm under the threshold are
withheld. Balance and estimates are counts in disguise, so they follow the counts (issue 18, review D1):

- The unweighted SMD of an indicator covariate is a function of its four cells (with / without it, in each
  arm) and the published arm sizes: solved for them it gives them back exactly. It is published only when
  every cell reaches the threshold, zero included: a 0 beside a published arm size says that no one (or
  everyone) in the arm had the characteristic, an attribute disclosure about each of them (the "group
  disclosure" of statistical disclosure control, which is why SDC guides treat zeros and full cells like
  small ones for characteristics, unlike event counts where "nobody died" is the outcome being reported).
  The cells are suppressed like the other counts, with the sums across comparisons (the conventional arm is
  CTX + MTX + AZA + other agents), so differencing comparisons does not give one back either. The weighted
  SMD of such a covariate goes with it (its denominator is the same function of the cells).
- A continuous covariate's SMD (difference of means over the pooled SD) is one number from at least
  ``threshold`` patients per arm: no cell exists to recover and no single value is determined by it (any
  arm with fewer patients has all its balance withheld already).
- An arm's event count is withheld when the arm's patients without the event are 1 … threshold-1 too ("all
  but 2 died" names the 2 survivors as surely as "2 died" names the dead).
- A site's estimate (log HR, robust SE) of an outcome is withheld when either arm's event count is withheld:
  with few events the estimate and its SE pin the count down closely, which would undo the suppression. The
  same rule (withheld_estimate) stops the site answering pooling rounds for that fit: Newton terms at a few
  betas approximate its estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Mapping

import jsonschema
import numpy as np
import pandas as pd

from analytics.balance import kish_ess
from analytics.cohort.concepts import ConceptMap
from analytics.comparisons import OUTCOMES, RETROSPECTIVE_COMPARISONS
from analytics.cox import CoxConvergenceError, fit_cox
from analytics.propensity import design_matrix

from .contract import concept_map_report, contract_digest
from .schema import NOTES, SCHEMA_VERSION, SITE_PACKAGE, SMD_BOUND
from .signing import Signer
from .site import TREATED_GROUP, comparison_rows, outcome_rows
from .suppression import DEFAULT_THRESHOLD, suppress

OTHER = "virtual.other_agents"   # conventional patients on agents without a comparison of their own (MMF, CsA)


@dataclass(frozen=True)
class SiteTables:
    """The site's warehouse tables the package is built from (as the pipeline writes them)."""

    cohort: pd.DataFrame
    cohort_attrition: pd.DataFrame
    iptw_weights: pd.DataFrame
    covariate_balance: pd.DataFrame


def _members(cohort: pd.DataFrame, agent: str | None) -> pd.DataFrame:
    # The selection of analytics.comparisons.retrospective_comparison (tested to agree with its counts).
    return cohort if agent is None else cohort[(cohort["group"] == TREATED_GROUP) | (cohort["conventional_agent"] == agent)]


def _counts(tables: SiteTables) -> tuple[dict[str, int], list[tuple[str, list[str]]]]:
    """Every count the package could publish, and the sums among them (for complementary suppression)."""
    cohort = tables.cohort
    treated = cohort["group"].eq(TREATED_GROUP)
    counts = {"cohort.n": len(cohort), "cohort.groups.tacrolimus": int(treated.sum()),
              "cohort.groups.conventional": int(cohort["group"].eq("conventional").sum())}
    relations: list[tuple[str, list[str]]] = [("cohort.n", ["cohort.groups.tacrolimus", "cohort.groups.conventional"])]
    for name, frame in tables.cohort_attrition.groupby("cohort", sort=False):
        frame = frame.sort_values("step")
        base = f"attrition.{name}"
        counts[f"{base}.screened"] = int(frame["n_remaining"].iloc[0])
        counts[f"{base}.included"] = int(frame["n_remaining"].iloc[-1])
        parts = []
        for row in frame.iloc[1:].itertuples(index=False):
            counts[f"{base}.excluded.{row.reason}"] = int(row.n_excluded)
            parts.append(f"{base}.excluded.{row.reason}")
        relations.append((f"{base}.screened", [*parts, f"{base}.included"]))
        if name == "retrospective":
            relations.append(("cohort.n", [f"{base}.included"]))
    agents = [a for a in RETROSPECTIVE_COMPARISONS.values() if a is not None]
    other = cohort[cohort["group"].eq("conventional") & ~cohort["conventional_agent"].isin(agents)]
    counts[f"{OTHER}.n_control"] = len(other)
    for outcome in OUTCOMES:
        counts[f"{OTHER}.{outcome}.events_control"] = int(other[f"{outcome}_event"].sum())
    for name, agent in RETROSPECTIVE_COMPARISONS.items():
        members = _members(cohort, agent)
        arm = members["group"].eq(TREATED_GROUP)
        base = f"comparisons.{name}"
        counts[f"{base}.n_treated"], counts[f"{base}.n_control"] = int(arm.sum()), int((~arm).sum())
        relations.append((f"{base}.n_treated", ["cohort.groups.tacrolimus"]))
        for outcome in OUTCOMES:
            event = members[f"{outcome}_event"]
            for side, rows in (("treated", arm), ("control", ~arm)):
                cell = f"{base}.outcomes.{outcome}.events_{side}"
                counts[cell] = int(event[rows].sum())
                # The arm's patients without the event: "all but 2 died" identifies 2 as surely as "2 died".
                counts[f"virtual.{cell}.survivors"] = int(rows.sum()) - counts[cell]
                relations.append((f"{base}.n_{side}", [cell, f"virtual.{cell}.survivors"]))
    main = "comparisons.tacrolimus_vs_conventional"
    by_agent = [f"comparisons.{n}" for n, a in RETROSPECTIVE_COMPARISONS.items() if a is not None]
    relations.append((f"{main}.n_control", ["cohort.groups.conventional"]))
    relations.append((f"{main}.n_control", [f"{b}.n_control" for b in by_agent] + [f"{OTHER}.n_control"]))
    for outcome in OUTCOMES:
        for b in by_agent:
            relations.append((f"{main}.outcomes.{outcome}.events_treated", [f"{b}.outcomes.{outcome}.events_treated"]))
        relations.append((f"{main}.outcomes.{outcome}.events_control",
                          [f"{b}.outcomes.{outcome}.events_control" for b in by_agent] + [f"{OTHER}.{outcome}.events_control"]))
    return counts, relations


def _indicator_cells(tables: SiteTables) -> tuple[dict[str, int], list[tuple[str, list[str]]], set[str]]:
    """The (with, without) cells of each indicator covariate in each arm of each comparison, under the names
    ``{comparison}.{treated|control}.{covariate}.{with|without}``, the sums among them, and the indicators."""
    cohort = tables.cohort
    design = design_matrix(cohort).drop(columns="const")
    indicators = [c for c in design.columns if set(np.unique(design[c].to_numpy(dtype=float))) <= {0.0, 1.0}]
    treated = cohort["group"].eq(TREATED_GROUP).to_numpy()
    agents = [a for a in RETROSPECTIVE_COMPARISONS.values() if a is not None]
    other = (cohort["group"].eq("conventional") & ~cohort["conventional_agent"].isin(agents)).to_numpy()
    cells: dict[str, int] = {}
    relations: list[tuple[str, list[str]]] = []
    main = "tacrolimus_vs_conventional"
    for cov in indicators:
        x = design[cov].to_numpy(dtype=float).astype(bool)
        for level, has in (("with", x), ("without", ~x)):
            cells[f"virtual.other.{cov}.{level}"] = int((has & other).sum())
            for name, agent in RETROSPECTIVE_COMPARISONS.items():
                members = treated | cohort["conventional_agent"].eq(agent).to_numpy() if agent is not None else np.ones(len(x), bool)
                cells[f"{name}.treated.{cov}.{level}"] = int((has & members & treated).sum())
                cells[f"{name}.control.{cov}.{level}"] = int((has & members & ~treated).sum())
            by_agent = [n for n, a in RETROSPECTIVE_COMPARISONS.items() if a is not None]
            relations.append((f"{main}.control.{cov}.{level}", [f"{n}.control.{cov}.{level}" for n in by_agent]
                              + [f"virtual.other.{cov}.{level}"]))
            relations += [(f"{main}.treated.{cov}.{level}", [f"{n}.treated.{cov}.{level}"]) for n in by_agent]
    return cells, relations, set(indicators)


def _balance(tables: SiteTables, name: str, withheld_cells: set[str], indicators: set[str]) -> list[dict[str, Any]]:
    rows = []
    for r in tables.covariate_balance[tables.covariate_balance["analysis"] == name].itertuples(index=False):
        cov = str(r.covariate)
        hidden = (cov in indicators and any(f"{name}.{arm}.{cov}.{level}" in withheld_cells
                                            for arm in ("treated", "control") for level in ("with", "without")))
        smd = (float(r.smd_unweighted), float(r.smd_weighted))
        if hidden or not all(math.isfinite(v) and abs(v) <= SMD_BOUND for v in smd):
            smd = (None, None)  # a cell under the threshold (or beyond any balance worth reporting): withheld
        rows.append({"covariate": cov, "smd_unweighted": smd[0], "smd_weighted": smd[1]})
    return rows


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def withheld_estimate(raw: Mapping[str, int], published: Mapping[str, int | None], comparison: str, outcome: str,
                      threshold: int) -> str | None:
    """Why the site's own estimate of ``comparison`` × ``outcome`` is withheld for disclosure control (a NOTES key:
    small_arm or events_withheld), or None. One rule for the package and for the pooling rounds: Newton terms at
    a few betas approximate the site's own estimate, so a site whose package withholds an estimate does not
    answer rounds for it either (federation/protocol.py)."""
    base = f"comparisons.{comparison}"
    if min(raw[f"{base}.n_treated"], raw[f"{base}.n_control"]) < threshold:
        return "small_arm"
    key = f"{base}.outcomes.{outcome}"
    if published[f"{key}.events_treated"] is None or published[f"{key}.events_control"] is None:
        return "events_withheld"
    return None


def suppressed_counts(tables: SiteTables, threshold: int = DEFAULT_THRESHOLD) -> tuple[dict[str, int], dict[str, int | None], set[str]]:
    """The raw counts, the published ones (withheld as None), and the withheld cells."""
    raw, relations = _counts(tables)
    published, withheld = suppress(raw, relations, threshold)
    return raw, published, withheld


def withheld_estimates(tables: SiteTables, threshold: int = DEFAULT_THRESHOLD) -> dict[tuple[str, str], str]:
    """(comparison, outcome) -> why the package withholds that estimate, for every estimate it withholds."""
    raw, published, _ = suppressed_counts(tables, threshold)
    out = {}
    for comparison in RETROSPECTIVE_COMPARISONS:
        for outcome in OUTCOMES:
            why = withheld_estimate(raw, published, comparison, outcome, threshold)
            if why is not None:
                out[(comparison, outcome)] = why
    return out


def _comparison(tables: SiteTables, name: str, published: Mapping[str, int | None], raw: Mapping[str, int],
                threshold: int, withheld_cells: set[str], indicators: set[str]) -> dict[str, Any]:
    base = f"comparisons.{name}"
    small = withheld_estimate(raw, published, name, OUTCOMES[0], threshold) == "small_arm"
    rows = comparison_rows(tables.cohort, tables.iptw_weights, name)
    note = None
    if small:
        note = NOTES["small_arm"]
    elif rows.empty:
        note = NOTES["no_weights"]
    elif len(rows) != len(_members(tables.cohort, RETROSPECTIVE_COMPARISONS[name])):
        note = NOTES["weights_incomplete"]
    usable = note is None
    arm = rows["treated"].to_numpy(dtype=bool) if usable else np.zeros(0, dtype=bool)
    w = rows["weight"] if usable else pd.Series(dtype=float)
    balance = _balance(tables, name, withheld_cells, indicators) if usable else None
    outcomes = {}
    for outcome in OUTCOMES:
        key = f"{base}.outcomes.{outcome}"
        estimate, why = None, note
        if usable:
            withheld = withheld_estimate(raw, published, name, outcome, threshold)
            if withheld is not None:
                why = NOTES[withheld]
            elif min(raw[f"{key}.events_treated"], raw[f"{key}.events_control"]) == 0:
                why = NOTES["no_events"]
            else:
                try:
                    fit = fit_cox(*outcome_rows(rows, outcome).arrays())
                    estimate = {"log_hr": float(fit.coef[0]), "robust_se": float(fit.robust_se[0])}
                except (CoxConvergenceError, np.linalg.LinAlgError):
                    why = NOTES["cox_failed"]
        outcomes[outcome] = {"events_treated": published[f"{key}.events_treated"],
                             "events_control": published[f"{key}.events_control"], "estimate": estimate, "note": why}
    return {"n_treated": published[f"{base}.n_treated"], "n_control": published[f"{base}.n_control"],
            "ess_treated": _finite(kish_ess(w[arm])) if usable else None,
            "ess_control": _finite(kish_ess(w[~arm])) if usable else None,
            "balance": balance, "outcomes": outcomes, "note": note}


def _software() -> dict[str, str]:
    try:
        package_version = version("iimild-pipeline")
    except PackageNotFoundError:
        package_version = "unknown"
    return {"package_version": package_version, "git_commit": "unknown"}


def build_site_package(site_id: str, tables: SiteTables, *, terms: dict[str, Any], concepts: ConceptMap, data_cutoff: date,
                       threshold: int = DEFAULT_THRESHOLD, software: dict[str, str] | None = None,
                       created_at: datetime | None = None) -> dict[str, Any]:
    """The package payload (unsigned): aggregates only, small cells withheld. Checked against the package schema
    here, so a site learns why (e.g. a GIT_COMMIT that is not a commit hash) before the coordinator rejects it."""
    raw, published, withheld = suppressed_counts(tables, threshold)
    cells, cell_relations, indicators = _indicator_cells(tables)
    withheld_cells = suppress(cells, cell_relations, threshold, zero_is_small=True)[1]
    attrition: dict[str, Any] = {}
    for name in dict.fromkeys(tables.cohort_attrition["cohort"]):
        base = f"attrition.{name}"
        attrition[name] = {"screened": published[f"{base}.screened"], "included": published[f"{base}.included"],
                           "excluded": {k.removeprefix(f"{base}.excluded."): v for k, v in published.items()
                                        if k.startswith(f"{base}.excluded.")}}
    payload = {
        "schema_version": SCHEMA_VERSION, "kind": "site_aggregates", "site_id": site_id,
        "created_at": (created_at or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "contract": {"digest": contract_digest(terms), "terms": terms, "concept_map": concept_map_report(concepts),
                     "data_cutoff": data_cutoff.isoformat()},
        "software": {k: v.lower() if k == "git_commit" else v for k, v in (software or _software()).items()},
        "suppression": {"threshold": threshold, "withheld": sorted(k for k in withheld if not k.startswith("virtual."))},
        "cohort": {"n": published["cohort.n"], "groups": {"tacrolimus": published["cohort.groups.tacrolimus"],
                                                          "conventional": published["cohort.groups.conventional"]}},
        "attrition": attrition,
        "comparisons": {name: _comparison(tables, name, published, raw, threshold, withheld_cells, indicators)
                        for name in RETROSPECTIVE_COMPARISONS},
    }
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SITE_PACKAGE).iter_errors(payload))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"the site package would be rejected by the consortium's schema: {where}: {error.message[:300]}")
    return payload


def sign_package(payload: dict[str, Any], signer: Signer) -> dict[str, Any]:
    if signer.party != payload["site_id"]:
        raise ValueError(f"the key of {signer.party!r} cannot sign the package of site {payload['site_id']!r}")
    return signer.sign(payload)
