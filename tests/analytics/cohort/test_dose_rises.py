"""The days on which the daily glucocorticoid total rises (relapse criterion iii), read from the statements'
boundaries (``PatientRecord.dose_rises``), must be the days and totals the day-by-day array gives."""
from __future__ import annotations

import random
from collections import namedtuple
from datetime import date, timedelta

import numpy as np

from analytics.cohort.params import RuleParams
from analytics.cohort.patient import PatientRecord

Exposure = namedtuple("Exposure", "concept start end daily_dose_mg pred_factor")
FIRST = date(2016, 3, 1)


def record(statements: list[tuple[int, int, float | None]]) -> PatientRecord:
    """One patient whose glucocorticoid statements run (first day, last day, mg/day) relative to FIRST."""
    rows = [Exposure("glucocorticoid", FIRST + timedelta(days=a), FIRST + timedelta(days=b), dose, 1.0) for a, b, dose in statements]
    facts = {"diagnoses": {}, "exposures": {"p": rows}, "procedures": {}, "observations": {}, "last_contact": {}}
    return PatientRecord("p", None, facts, RuleParams())


def test_the_total_rises_where_a_statement_starts_over_the_day_before():
    """0-10: 20 mg, 5-7: +10 mg, 8-20: +30 mg (the 10 mg ended on day 7), a statement without a dose on day 3
    (covered, adds nothing), nothing on days 21-24, then 5 mg."""
    patient = record([(0, 10, 20.0), (5, 7, 10.0), (8, 20, 30.0), (3, 3, None), (25, 30, 5.0)])
    assert patient.dose_rises("glucocorticoid", FIRST, FIRST + timedelta(days=30)) == [(5, 30.0), (8, 50.0), (25, 5.0)]


def test_a_statement_started_before_the_first_day_is_no_rise_on_day_zero():
    patient = record([(-5, 40, 10.0), (2, 3, 0.5)])
    assert patient.dose_rises("glucocorticoid", FIRST, FIRST + timedelta(days=10)) == [(2, 10.5)]


def test_the_same_days_and_bitwise_the_same_totals_as_the_day_by_day_array():
    """Doses whose float sums depend on the order they are added in (0.1 + 0.2 + 0.7), overlapping, starting before
    and ending after the window."""
    rng = random.Random(16)
    for _ in range(300):
        statements = [(a := rng.randint(-20, 60), a + rng.randint(0, 40), rng.choice([0.1, 0.2, 0.7, 2.5, 1 / 3, None]))
                      for _ in range(rng.randint(0, 8))]
        patient, last = record(statements), rng.randint(1, 70)
        total = patient.daily_doses("glucocorticoid", FIRST, FIRST + timedelta(days=last))[0]
        expected = [(d, float(total[d])) for d in (np.flatnonzero(total[1:] > total[:-1]) + 1).tolist()]
        assert patient.dose_rises("glucocorticoid", FIRST, FIRST + timedelta(days=last)) == expected, statements
