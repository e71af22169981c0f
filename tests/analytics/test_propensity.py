"""Propensity scores and IPTW weights (analytics.propensity), checked against closed forms."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics.propensity import PropensityModelError, design_matrix, fit_propensity, iptw_weights


def cohort(n_cells: dict[tuple[str, int], int]) -> tuple[pd.DataFrame, pd.Series]:
    """Rows for each (sex, treated) cell; with sex as the only covariate the logistic model is saturated."""
    rows = [{"sex": sex, "treated": t} for (sex, t), n in n_cells.items() for _ in range(n)]
    frame = pd.DataFrame(rows)
    return frame, frame["treated"].astype(bool)


def test_saturated_model_gives_the_observed_proportions_and_ate_weights_sum_to_n():
    frame, treated = cohort({("female", 1): 30, ("female", 0): 10, ("male", 1): 5, ("male", 0): 15})
    fit = fit_propensity(frame, treated, covariates=("sex",))
    assert fit.scores[frame["sex"] == "female"].to_numpy() == pytest.approx(0.75)
    assert fit.scores[frame["sex"] == "male"].to_numpy() == pytest.approx(0.25)
    w = iptw_weights(treated, fit.scores)
    # With a saturated model each weighted group reproduces the whole sample.
    assert w.loc[treated, "weight"].sum() == pytest.approx(len(frame))
    assert w.loc[~treated, "weight"].sum() == pytest.approx(len(frame))
    assert w.loc[treated, "stabilized_weight"].sum() == pytest.approx(treated.sum())


def test_design_matrix_uses_fixed_references_and_drops_constant_indicators():
    frame = pd.DataFrame({"age": [50.0, 60.0], "sex": ["female", "female"], "diagnosis_subset": ["DM", "CADM"],
                          "initial_pred_mg_day": [50.0, 60.0], "plasma_exchange": [0, 1], "ivig": [0, 0]})
    assert list(design_matrix(frame).columns) == ["const", "age", "diagnosis_subset[CADM]", "initial_pred_mg_day",
                                                  "plasma_exchange"]


def test_one_empty_group_is_a_clear_error():
    frame, treated = cohort({("female", 1): 3, ("male", 1): 3})
    with pytest.raises(PropensityModelError, match="both groups"):
        fit_propensity(frame, treated, covariates=("sex",))


def test_a_comparison_without_events_in_a_group_is_reported_not_estimable():
    from analytics.comparisons import prospective_comparison

    cohort = pd.DataFrame({"group": ["combination", "combination", "tacrolimus", "tacrolimus"],
                           **{f"{o}_days": [10, 20, 30, 40] for o in ("death", "relapse", "resp_relapse")},
                           **{f"{o}_event": [0, 0, 1, 1] for o in ("death", "relapse", "resp_relapse")}})
    row = prospective_comparison(cohort).effect_estimates.iloc[0]
    assert np.isnan(row["hazard_ratio"]) and np.isnan(row["logrank_p"])
    assert (row["n_treated"], row["events_treated"], row["events_control"]) == (2, 0, 2)


def test_a_covariate_that_separates_the_groups_is_a_clear_error_not_infinite_weights():
    frame, treated = cohort({("female", 1): 6, ("male", 0): 6})
    with pytest.raises(PropensityModelError, match="separate the groups"):
        fit_propensity(frame, treated, covariates=("sex",))


def test_a_separated_comparison_is_reported_not_estimable_with_its_reason():
    from analytics.comparisons import retrospective_comparison

    n = 12
    cohort_rows = pd.DataFrame({
        "group": ["tacrolimus"] * (n // 2) + ["conventional"] * (n // 2), "conventional_agent": [None] * (n // 2) + ["MTX"] * (n // 2),
        "age": [40.0 + i for i in range(n)], "sex": ["female"] * (n // 2) + ["male"] * (n // 2),
        "diagnosis_subset": ["DM"] * n, "initial_pred_mg_day": [50.0] * n, "plasma_exchange": [0] * n, "ivig": [0] * n,
        **{f"{o}_days": list(range(10, 10 + n)) for o in ("death", "relapse", "resp_relapse")},
        **{f"{o}_event": [1, 0] * (n // 2) for o in ("death", "relapse", "resp_relapse")}})
    results = retrospective_comparison(cohort_rows, "tacrolimus_vs_mtx", "MTX")
    assert results.iptw_weights.empty
    assert results.effect_estimates["hazard_ratio"].isna().all()
    assert "separate the groups" in results.diagnostics["tacrolimus_vs_mtx"]["error"]
