"""A site's analysis rows, from the warehouse tables the pipeline already writes: ``cohort`` (one row per
patient) and ``iptw_weights`` (each patient's weight in each comparison, from the site's own propensity
model refit within the pair, analytics/comparisons.py). Nothing is recomputed: the rows a site pools are
the rows its own effect estimates were fitted on."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analytics.comparisons import OUTCOMES, RETROSPECTIVE_COMPARISONS

TREATED_GROUP = "tacrolimus"


class SiteDataError(ValueError):
    """The site's tables do not fit together (e.g. weights for patients not in the cohort)."""


@dataclass(frozen=True)
class OutcomeRows:
    """One comparison × outcome: what the Cox model sees, in the cohort's row order."""

    time: np.ndarray
    event: np.ndarray
    treated: np.ndarray   # 0/1
    weight: np.ndarray

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.time, self.event, self.treated, self.weight


def comparison_rows(cohort: pd.DataFrame, iptw_weights: pd.DataFrame, comparison: str) -> pd.DataFrame:
    """The cohort rows weighted in ``comparison``, with columns ``treated`` (bool) and ``weight`` added.
    Empty when the comparison has no weights (its propensity model could not be fitted)."""
    if comparison not in RETROSPECTIVE_COMPARISONS:
        raise SiteDataError(f"unknown comparison {comparison!r}")
    w = iptw_weights.loc[iptw_weights["analysis"] == comparison, ["patient_key", "weight"]]
    if w["patient_key"].duplicated().any():
        raise SiteDataError(f"iptw_weights has a patient twice in {comparison}")
    rows = cohort.merge(w, on="patient_key", how="inner", validate="one_to_one")
    if len(rows) != len(w):
        raise SiteDataError(f"{len(w) - len(rows)} weighted patients of {comparison} are not in the cohort: "
                            "cohort and iptw_weights come from different runs")
    weights = rows["weight"].to_numpy(dtype=float)
    if not np.all(np.isfinite(weights) & (weights > 0)):
        raise SiteDataError(f"non-positive or missing weights in {comparison}")
    return rows.assign(treated=rows["group"].eq(TREATED_GROUP))


def outcome_rows(rows: pd.DataFrame, outcome: str) -> OutcomeRows:
    if outcome not in OUTCOMES:
        raise SiteDataError(f"unknown outcome {outcome!r}")
    return OutcomeRows(rows[f"{outcome}_days"].to_numpy(dtype=float), rows[f"{outcome}_event"].to_numpy(dtype=int),
                       rows["treated"].to_numpy(dtype=int), rows["weight"].to_numpy(dtype=float))
