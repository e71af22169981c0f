"""RMST, E-values and IPTW Aalen-Johansen (analytics.extras)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analytics.extras import aalen_johansen, e_value, rmst, rmst_difference
from tests.paths import STATS_FIXTURES

HERE = STATS_FIXTURES
REF = json.loads((HERE / "reference.json").read_text())


@pytest.fixture(scope="module")
def small():
    return pd.read_csv(HERE / "small.csv")


def test_rmst_equals_r_restricted_mean(small):
    g = small[small.treated == 1]
    assert rmst(g.time, g.event, g.w, tau=8).rmst == pytest.approx(REF["small_rmst_treated_tau8"], abs=1e-9)


def test_rmst_standard_error_is_the_infinitesimal_jackknife(small):
    """Check the analytic influences against finite differences of RMST in each patient's weight."""
    g = small[small.treated == 1].reset_index(drop=True)
    base = rmst(g.time, g.event, g.w, tau=8)
    eps = 1e-6
    influence = np.array([(rmst(g.time, g.event, g.w + eps * (np.arange(len(g)) == i), tau=8).rmst - base.rmst) / eps
                          for i in range(len(g))])
    assert base.se == pytest.approx(np.sqrt(np.sum((g.w.to_numpy() * influence) ** 2)), rel=1e-5)


def test_rmst_difference_is_treated_minus_control(small):
    out = rmst_difference(small.time, small.event, small.treated, small.w, tau=8)
    assert out["difference"] == pytest.approx(out["rmst_treated"] - out["rmst_control"])
    assert out["ci_lower"] < out["difference"] < out["ci_upper"]


@pytest.mark.parametrize("hr, lo, hi, common, expected", [
    (3.9, 1.8, 8.7, False, (7.26, 3.00)),       # VanderWeele & Ding 2017: RR 3.9 (1.8-8.7)
    (10.73, 8.02, 14.36, False, (20.95, 15.53)),  # smoking and lung cancer
    (0.5, 0.3, 1.2, False, (3.41, 1.0)),         # a protective effect whose CI crosses 1
])
def test_e_values_from_the_published_examples(hr, lo, hi, common, expected):
    assert e_value(hr, lo, hi, common) == pytest.approx(expected, abs=0.01)


def test_common_outcome_e_value_uses_the_square_root_transform():
    rr = (1 - 0.5 ** np.sqrt(0.4)) / (1 - 0.5 ** np.sqrt(1 / 0.4))
    point, _ = e_value(0.4, 0.2, 0.8, common_outcome=True)
    assert point == pytest.approx(1 / rr + np.sqrt(1 / rr * (1 / rr - 1)))


def test_aalen_johansen_equals_r_multistate_survfit(small):
    cause = np.where(small.event == 0, 0, np.where(small.treated == 1, 1, 2))
    got = aalen_johansen(small.time, cause, small.w)
    ref = REF["small_aalen_johansen"]
    assert list(got["time_days"]) == pytest.approx(ref["time"])
    np.testing.assert_allclose(got["cif_cause1"], ref["cif1"], atol=1e-9)
    np.testing.assert_allclose(got["cif_cause2"], ref["cif2"], atol=1e-9)
