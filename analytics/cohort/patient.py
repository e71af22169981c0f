"""One patient's study facts with the rules both cohorts share (study-contract.md §2-3):
covariates at an index date, follow-up and censoring, death, relapse and respiratory relapse.

A patient's facts are plain lists of rows (named tuples, one list per fact table), split by patient
once (``group_facts``). The rules used to filter a small DataFrame per patient and question, which
cost ~100 µs of pandas overhead per filter and kept the rules at ~160 patients/s; the same rules
over a few dozen tuples run at thousands of patients/s and read the same.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections import namedtuple
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from .facts import CONVENTIONAL, IMMUNOSUPPRESSANTS, StudyFacts
from .params import RuleParams

Row = Any  # a named tuple of one fact table's columns (``DataFrame.itertuples``)


class Day(NamedTuple):
    """An observation with its day relative to an index date."""

    day: int
    row: Row


def completed_years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def present(value: Any) -> bool:
    """Not None and not NaN: a fact table cell that holds a value."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NaT


@lru_cache(maxsize=64)
def _row_type(columns: tuple[str, ...]) -> type:
    return namedtuple("Row", columns)  # type: ignore[misc]


def by_patient(frame: pd.DataFrame) -> dict[str, list[Row]]:
    """The frame's rows as named tuples, per patient, in the frame's row order (the values as
    ``itertuples`` gives them: Python scalars; ``tolist`` per column is the faster way there)."""
    out: dict[str, list[Row]] = {}
    if frame.empty:
        return out
    row_type, new = _row_type(tuple(frame.columns)), tuple.__new__  # what ``_make`` does, without its call per row
    columns = [frame[c].tolist() for c in frame.columns]
    for pid, values in zip(frame["patient_id"].tolist(), zip(*columns, strict=True), strict=True):
        out.setdefault(pid, []).append(new(row_type, values))
    return out


class PatientRecord:
    """One patient's facts, with the contract's shared rules as methods."""

    def __init__(self, pid: str, row: Any, facts: dict[str, dict[str, Any]], p: RuleParams) -> None:
        self.pid, self.row, self.p = pid, row, p
        self.dx: list[Row] = facts["diagnoses"].get(pid, [])
        self.ex: list[Row] = facts["exposures"].get(pid, [])
        self.proc: list[Row] = facts["procedures"].get(pid, [])
        self.obs: list[Row] = facts["observations"].get(pid, [])
        self.latest_contact: date | None = facts["last_contact"].get(pid)
        self.quality: set[str] = set()
        self._doses: dict[str, list[tuple[int, int, float | None]]] = {}
        self._obs_of: dict[str, list[Row]] | None = None
        self._obs_days: dict[tuple[str, date], list[Day]] = {}

    def dx_dates(self, *concepts: str) -> list[date]:
        """The dates of the dated diagnoses of ``concepts``, sorted: for the rules that measure from a diagnosis."""
        return sorted(r.date for r in self.dx if r.concept in concepts and present(r.date))

    def has_dx(self, *concepts: str) -> bool:
        """Whether a diagnosis of ``concepts`` exists, dated or not: for the rules that ask only that (README
        Definitions, undated conditions)."""
        return any(r.concept in concepts for r in self.dx)

    def has_undated_dx(self, *concepts: str) -> bool:
        """Whether a diagnosis of ``concepts`` has no date: a rule measured from it cannot be evaluated."""
        return any(r.concept in concepts and not present(r.date) for r in self.dx)

    def exposures(self, *concepts: str) -> list[Row]:
        return [r for r in self.ex if r.concept in concepts]

    def agents_in_first_year(self, index: date) -> set[str]:
        end = index + timedelta(days=self.p.followup_days)
        return {r.concept for r in self.exposures(*IMMUNOSUPPRESSANTS) if r.start <= end and r.end >= index}

    # -- covariates --------------------------------------------------------------------------
    def daily_doses(self, concept: str, first_day: date, last_day: date) -> tuple[np.ndarray, np.ndarray]:
        """mg/day summed over the statements of ``concept`` covering each day (statements with explicit
        ends may overlap and their doses add), prednisolone-equivalent for glucocorticoids; and which days
        any statement covers. A statement without a computable dose adds nothing (it is counted elsewhere)."""
        n = max((last_day - first_day).days + 1, 0)
        first = first_day.toordinal()
        if n == 1:  # one day (a covariate, a visit): the same sum, in the same order, without arrays per statement
            day_total, day_covered = 0.0, False
            for start, end, dose in self._dose_intervals(concept):
                if start <= first <= end:
                    day_covered = True
                    if dose is not None:
                        day_total += dose
            return np.array([day_total]), np.array([day_covered])
        total, covered = np.zeros(n), np.zeros(n, dtype=bool)
        for start, end, dose in self._dose_intervals(concept):
            a, b = max(start - first, 0), min(end - first, n - 1)
            if a > b:
                continue
            covered[a:b + 1] = True
            if dose is not None:
                total[a:b + 1] += dose
        return total, covered

    def _dose_intervals(self, concept: str) -> list[tuple[int, int, float | None]]:
        """(first day, last day as ordinals, mg/day) of each statement of ``concept``, read once per patient:
        the rules ask for doses on many days, and re-reading the statements each time was most of their cost."""
        if concept not in self._doses:
            gc = concept == "glucocorticoid"
            self._doses[concept] = [
                (r.start.toordinal(), r.end.toordinal(),
                 float(r.daily_dose_mg) * (float(r.pred_factor) if gc else 1.0) if present(r.daily_dose_mg) else None)
                for r in self.exposures(concept)]
        return self._doses[concept]

    def dose_rises(self, concept: str, first_day: date, last_day: date) -> list[tuple[int, float]]:
        """(day, total) for each day after ``first_day`` (day 0), up to ``last_day``, on which the daily total of
        ``daily_doses`` is higher than the day before's: the same totals, summed in the same order, computed only
        where a dosed statement starts or the day after one ends (elsewhere the statements covering a day and the
        day before are the same, so the totals are equal). The array over a year of days cost a fifth of the rules."""
        first, n = first_day.toordinal(), (last_day - first_day).days + 1
        dosed = [(start - first, end - first, dose) for start, end, dose in self._dose_intervals(concept) if dose is not None]

        def total(d: int) -> float:
            day_total = 0.0
            for a, b, dose in dosed:
                if a <= d <= b:
                    day_total += dose
            return day_total

        changes = sorted({d for a, b, _ in dosed for d in (a, b + 1) if 1 <= d <= n - 1})
        return [(d, now) for d in changes if (now := total(d)) > total(d - 1)]

    def gc_daily(self, first_day: date, last_day: date) -> np.ndarray:
        """Prednisolone-equivalent mg/day summed over the GC statements covering each day."""
        return self.daily_doses("glucocorticoid", first_day, last_day)[0]

    def covariates(self, index: date) -> dict[str, Any]:
        p = self.p
        subset = ("CADM" if self.has_dx("cadm") else "ASS" if self.has_dx("antisynthetase_syndrome")
                  else "DM" if self.has_dx("dermatomyositis", "dermatopolymyositis_unspecified") else "PM")
        agents_at_index = {r.concept for r in self.exposures(*CONVENTIONAL) if r.start == index}
        agent = next((a for a in CONVENTIONAL if a in agents_at_index), None)
        lo, hi = index - timedelta(days=p.covariate_window_days), index + timedelta(days=p.covariate_window_days)
        pe = any(r.concept == "plasma_exchange" and lo <= r.date <= hi for r in self.proc)
        ivig = any(lo <= r.start <= hi for r in self.exposures("ivig"))
        return {"age": completed_years(self.row.birth_date, index), "sex": self.row.sex, "diagnosis_subset": subset,
                "initial_pred_mg_day": float(self.gc_daily(index, index)[0]), "plasma_exchange": int(pe),
                "ivig": int(ivig), "conventional_agent": agent}

    # -- follow-up and events ------------------------------------------------------------------
    def last_contact(self, default: date) -> date:
        """The latest clinical date on any counted resource (facts.contacts), ``default`` when there is none."""
        return self.latest_contact if self.latest_contact is not None else default

    def followup(self, index: date) -> dict[str, int]:
        p = self.p
        end = min(p.followup_days, (self.last_contact(index) - index).days, (p.data_cutoff - index).days)
        died = self.row.deceased_date
        death_day = (died - index).days if present(died) else None
        if death_day is not None and death_day <= 0:
            # The contract's death is one "within follow-up", and follow-up is days 1 ... 365 (as a relapse criterion
            # on day 0 is not a relapse): a death dated on the index day or before it is no event, the patient has
            # no follow-up after it, and data quality shows it (before index it is a data error; README Definitions).
            self.quality.add("death_before_index" if death_day < 0 else "death_on_index_day")
            return {"followup_days": 0, "death_event": 0, "death_days": 0}
        death = death_day is not None and death_day <= min(p.followup_days, (p.data_cutoff - index).days)
        followup = death_day if death else max(end, 0)
        return {"followup_days": followup, "death_event": int(death), "death_days": followup}  # type: ignore[dict-item]

    def obs_days(self, concept: str, index: date) -> list[Day]:
        """The observations of ``concept``, each with its day relative to ``index`` (kept: the relapse rules ask
        for the same concept and index more than once; callers only read the list)."""
        if self._obs_of is None:  # split by concept once: the rules ask for several concepts, several times
            self._obs_of = {}
            for r in self.obs:
                self._obs_of.setdefault(r.concept, []).append(r)
        key = (concept, index)
        if key not in self._obs_days:
            self._obs_days[key] = [Day((r.date - index).days, r) for r in self._obs_of.get(concept, ())]
        return self._obs_days[key]

    def _baseline(self, concept: str, index: date) -> float | None:
        """The value closest to index within the baseline window (the earlier on a tie of distance)."""
        lo, hi = -self.p.baseline_before_days, self.p.baseline_after_days
        window = [o for o in self.obs_days(concept, index) if lo <= o.day <= hi and present(o.row.value)]
        if not window:
            return None
        # Of several values on that day, the lowest: the table's order is the ids' order, and ids are the hospital's
        # choice (the same rule as visit values, README Definitions).
        return float(min(window, key=lambda o: (abs(o.day), o.day, float(o.row.value))).row.value)

    def relapses(self, index: date, followup: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
        p, w = self.p, self.p.relapse_window_days
        exac = [o for o in self.obs_days("symptom_exacerbation", index) if 1 <= o.day <= followup]
        out = {"relapse_event": 0, "relapse_days": followup, "resp_relapse_event": 0, "resp_relapse_days": followup}
        detail: list[dict[str, Any]] = []
        if not exac:
            return out, detail
        # Criterion (i): ferritin or ESR strictly above twice its baseline.
        lab_days: set[int] = set()
        for concept in ("ferritin", "esr"):
            base = self._baseline(concept, index)
            if base is not None:
                lab_days |= {o.day for o in self.obs_days(concept, index) if present(o.row.value) and o.row.value > p.lab_fold * base}
        # Criterion (ii): a positive radiological progression.
        rad_days = {o.day for o in self.obs_days("radiological_progression", index) if o.row.value_boolean == True}  # noqa: E712
        # Criterion (iii): the daily GC total rises and exceeds 0.5 mg/kg/day (weight on or before that day).
        last = max(o.day for o in exac) + w
        # By day, and within a day highest first, so that the last of a day (the one read) is its lowest weight,
        # whatever the order of the ids.
        weights = sorted((o for o in self.obs_days("body_weight", index) if present(o.row.value)),
                         key=lambda o: (o.day, -float(o.row.value)))
        weight_days = [o.day for o in weights]
        gc_days: set[int] = set()
        unevaluable: set[int] = set()  # GC increases with no weight on record: criterion (iii) unknown
        for d, gc in self.dose_rises("glucocorticoid", index, index + timedelta(days=last)):  # day 0 is index
            known = bisect_right(weight_days, d)  # weights[:known] are those on or before day d
            if not known:
                unevaluable.add(d)
            elif gc > p.gc_increase_mg_per_kg * float(weights[known - 1].row.value):
                gc_days.add(d)

        def near(days: set[int], t: int) -> bool:
            return any(max(1, t - w) <= d <= t + w for d in days)

        for t, category in sorted((o.day, o.row.value_code) for o in exac):
            crit = {"ferritin_esr": near(lab_days, t), "radiological": near(rad_days, t), "gc_increase": near(gc_days, t)}
            if near(unevaluable, t):
                self.quality.add("relapse_gc_criterion_not_evaluable_no_weight")
            if not out["relapse_event"] and any(crit.values()):
                out.update(relapse_event=1, relapse_days=int(t))
                detail.append({"patient_id": self.pid, "kind": "relapse", "day": int(t), "category": category, **crit})
            if not out["resp_relapse_event"] and category == "respiratory" and crit["radiological"]:
                out.update(resp_relapse_event=1, resp_relapse_days=int(t))
                detail.append({"patient_id": self.pid, "kind": "resp_relapse", "day": int(t), "category": category, **crit})
        return out, detail


GROUPED_FACTS = ("diagnoses", "exposures", "procedures", "observations")


def group_facts(facts: StudyFacts) -> dict[str, dict[str, Any]]:
    """Each per-patient fact table split by patient once, for PatientRecord; of the contacts (every clinical
    date, the largest table) only each patient's latest is kept, which is all the rules read."""
    grouped: dict[str, dict[str, Any]] = {name: by_patient(getattr(facts, name)) for name in GROUPED_FACTS}
    latest: dict[str, date] = {}
    for pid, when in zip(facts.contacts["patient_id"], facts.contacts["date"], strict=True):
        if pid not in latest or when > latest[pid]:
            latest[pid] = when
    grouped["last_contact"] = latest  # a loop: pandas groups an object column of dates in pure Python, slower still
    return grouped


def rows_of(frame: pd.DataFrame) -> Sequence[Row]:
    """A small frame's rows as named tuples (an enrolment list, say)."""
    return list(frame.itertuples(index=False))
