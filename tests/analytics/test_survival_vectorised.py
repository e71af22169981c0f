"""The vectorised Kaplan-Meier, log-rank tests, RMST and Aalen-Johansen equal the per-time loops they replaced
(tests/reference/survival_loops.py) on heavily tied, weighted data, including steps where everyone at risk dies,
a single patient at risk, and tau before the first time."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics import extras, km, logrank
from tests.reference import survival_loops as loops

RTOL = 1e-10


def sample(seed: int, n: int, days: int, event_rate: float):
    rng = np.random.default_rng(seed)
    time = rng.integers(1, days + 1, n).astype(float)
    event = (rng.random(n) < event_rate).astype(int)
    return time, event, rng.integers(0, 2, n), rng.uniform(0.3, 5.0, n)


SAMPLES = [(seed, n, days, rate) for seed, (n, days, rate) in enumerate(
    [(40, 5, 0.7), (300, 12, 0.4), (7, 3, 1.0), (1, 1, 1.0), (2, 2, 0.5), (500, 60, 0.2), (60, 4, 0.95)])]


@pytest.mark.parametrize("seed, n, days, rate", SAMPLES)
def test_kaplan_meier_equals_the_loop(seed, n, days, rate):
    time, event, _, w = sample(seed, n, days, rate)
    for weights, variance in ((w, "robust"), (None, "greenwood"), (None, "robust")):
        pd.testing.assert_frame_equal(km.weighted_km(time, event, weights, variance=variance),
                                      loops.weighted_km(time, event, weights, variance=variance), rtol=RTOL)


def _has_two_groups_and_a_death(seed: int, n: int, days: int, rate: float) -> bool:
    _, event, group, _ = sample(seed, n, days, rate)
    return group.min() != group.max() and event.sum() > 0


# A log-rank test needs two groups and a death: the samples without them are not log-rank cases (chosen here,
# not skipped at run time, so that no case of this test can pass without comparing anything).
LOGRANK_SAMPLES = [s for s in SAMPLES if _has_two_groups_and_a_death(*s)]


def test_most_samples_are_log_rank_cases():
    assert len(LOGRANK_SAMPLES) >= len(SAMPLES) - 2


@pytest.mark.parametrize("seed, n, days, rate", LOGRANK_SAMPLES)
def test_log_rank_tests_equal_the_loops(seed, n, days, rate):
    time, event, group, w = sample(seed, n, days, rate)
    pairs = [(logrank.logrank(time, event, group), loops.logrank(time, event, group)),
             (logrank.xie_liu_logrank(time, event, group, w), loops.xie_liu_logrank(time, event, group, w))]
    if n > 1:
        pairs.append((logrank.iptw_logrank(time, event, group, w), loops.iptw_logrank(time, event, group, w)))
    for new, old in pairs:
        np.testing.assert_allclose([new.score, new.se, new.z, new.p_value], [old.score, old.se, old.z, old.p_value],
                                   rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("seed, n, days, rate", SAMPLES)
@pytest.mark.parametrize("tau", [0.5, 2.0, 3.5, 365.0])
def test_rmst_equals_the_loop(seed, n, days, rate, tau):
    time, event, _, w = sample(seed, n, days, rate)
    for weights in (w, None):
        new, old = extras.rmst(time, event, weights, tau), loops.rmst(time, event, weights, tau)
        assert (new.rmst, new.se) == pytest.approx((old.rmst, old.se), rel=RTOL, abs=1e-12)


@pytest.mark.parametrize("seed, n, days, rate", SAMPLES)
def test_aalen_johansen_equals_the_loop(seed, n, days, rate):
    time, event, group, w = sample(seed, n, days, rate)
    cause = np.where(event == 0, 0, 1 + group)
    for weights in (w, None):
        pd.testing.assert_frame_equal(extras.aalen_johansen(time, cause, weights),
                                      loops.aalen_johansen(time, cause, weights), rtol=RTOL)


def test_the_samples_include_the_edge_cases():
    everyone_dies = sample(*SAMPLES[2])  # every patient dies: the last step has h = 1 and S = 0
    assert everyone_dies[1].all()
    one = sample(*SAMPLES[3])
    assert len(one[0]) == 1
