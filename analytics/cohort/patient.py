"""One patient's study facts with the rules both cohorts share (study-contract.md §2-3):
covariates at an index date, follow-up and censoring, death, relapse and respiratory relapse.
"""
from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from .facts import CONVENTIONAL, IMMUNOSUPPRESSANTS, StudyFacts
from .params import RuleParams


def completed_years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def by_patient(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {pid: grp for pid, grp in frame.groupby("patient_id", sort=False)}


class PatientRecord:
    """One patient's facts, with the contract's shared rules as methods."""

    def __init__(self, pid: str, row: Any, facts: dict[str, dict[str, pd.DataFrame]], p: RuleParams) -> None:
        empty = pd.DataFrame()
        self.pid, self.row, self.p = pid, row, p
        self.dx = facts["diagnoses"].get(pid, empty)
        self.ex = facts["exposures"].get(pid, empty)
        self.proc = facts["procedures"].get(pid, empty)
        self.obs = facts["observations"].get(pid, empty)
        self.contacts = facts["contacts"].get(pid, empty)
        self.quality: set[str] = set()

    def dx_dates(self, *concepts: str) -> list[date]:
        if self.dx.empty:
            return []
        return sorted(self.dx.loc[self.dx["concept"].isin(concepts), "date"])

    def exposures(self, *concepts: str) -> pd.DataFrame:
        if self.ex.empty:
            return self.ex
        return self.ex[self.ex["concept"].isin(concepts)]

    def agents_in_first_year(self, index: date) -> set[str]:
        ex = self.exposures(*IMMUNOSUPPRESSANTS)
        end = index + timedelta(days=self.p.followup_days)
        return set(ex.loc[(ex["start"] <= end) & (ex["end"] >= index), "concept"])

    # -- covariates --------------------------------------------------------------------------
    def daily_doses(self, concept: str, first_day: date, last_day: date) -> tuple[np.ndarray, np.ndarray]:
        """mg/day summed over the statements of ``concept`` covering each day (statements with explicit
        ends may overlap and their doses add), prednisolone-equivalent for glucocorticoids; and which days
        any statement covers. A statement without a computable dose adds nothing (it is counted elsewhere)."""
        n = max((last_day - first_day).days + 1, 0)
        total, covered = np.zeros(n), np.zeros(n, dtype=bool)
        ex = self.exposures(concept)
        for start, end, dose, factor in ex[["start", "end", "daily_dose_mg", "pred_factor"]].itertuples(index=False):
            a, b = max((start - first_day).days, 0), min((end - first_day).days, n - 1)
            if a > b:
                continue
            covered[a:b + 1] = True
            if dose is not None and not pd.isna(dose):
                total[a:b + 1] += float(dose) * (float(factor) if concept == "glucocorticoid" else 1.0)
        return total, covered

    def gc_daily(self, first_day: date, last_day: date) -> np.ndarray:
        """Prednisolone-equivalent mg/day summed over the GC statements covering each day."""
        return self.daily_doses("glucocorticoid", first_day, last_day)[0]

    def covariates(self, index: date) -> dict[str, Any]:
        p = self.p
        subset = ("CADM" if self.dx_dates("cadm") else "ASS" if self.dx_dates("antisynthetase_syndrome")
                  else "DM" if self.dx_dates("dermatomyositis", "dermatopolymyositis_unspecified") else "PM")
        agents_at_index = set(self.exposures(*CONVENTIONAL).pipe(lambda e: e.loc[e["start"] == index, "concept"]))
        agent = next((a for a in CONVENTIONAL if a in agents_at_index), None)
        window = (index - timedelta(days=p.covariate_window_days), index + timedelta(days=p.covariate_window_days))
        pe = (not self.proc.empty) and bool(((self.proc["concept"] == "plasma_exchange")
                                             & self.proc["date"].between(*window)).any())
        ivig_ex = self.exposures("ivig")
        ivig = (not ivig_ex.empty) and bool(ivig_ex["start"].between(*window).any())
        return {"age": completed_years(self.row.birth_date, index), "sex": self.row.sex, "diagnosis_subset": subset,
                "initial_pred_mg_day": float(self.gc_daily(index, index)[0]), "plasma_exchange": int(pe),
                "ivig": int(ivig), "conventional_agent": agent}

    # -- follow-up and events ------------------------------------------------------------------
    def last_contact(self, default: date) -> date:
        """The latest clinical date on any counted resource (facts.contacts), ``default`` when there is none."""
        return max(self.contacts["date"]) if not self.contacts.empty else default

    def followup(self, index: date) -> dict[str, int]:
        p = self.p
        end = min(p.followup_days, (self.last_contact(index) - index).days, (p.data_cutoff - index).days)
        died = self.row.deceased_date
        death_day = (died - index).days if died is not None and not pd.isna(died) else None
        death = death_day is not None and death_day <= min(p.followup_days, (p.data_cutoff - index).days)
        followup = max(death_day, 0) if death else max(end, 0)
        return {"followup_days": followup, "death_event": int(death), "death_days": followup}

    def _obs_days(self, concept: str, index: date) -> pd.DataFrame:
        if self.obs.empty:
            return self.obs
        o = self.obs[self.obs["concept"] == concept]
        return o.assign(day=[(d - index).days for d in o["date"]])

    def _baseline(self, concept: str, index: date) -> float | None:
        o = self._obs_days(concept, index)
        if o.empty:
            return None
        o = o[o["day"].between(-self.p.baseline_before_days, self.p.baseline_after_days) & o["value"].notna()]
        if o.empty:
            return None
        o = o.assign(dist=o["day"].abs()).sort_values(["dist", "day"])
        return float(o["value"].iloc[0])

    def relapses(self, index: date, followup: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
        p, w = self.p, self.p.relapse_window_days
        exac = self._obs_days("symptom_exacerbation", index)
        exac = exac[exac["day"].between(1, followup)] if not exac.empty else exac
        out = {"relapse_event": 0, "relapse_days": followup, "resp_relapse_event": 0, "resp_relapse_days": followup}
        detail: list[dict[str, Any]] = []
        if exac.empty:
            return out, detail
        # Criterion (i): ferritin or ESR strictly above twice its baseline.
        lab_days: set[int] = set()
        for concept in ("ferritin", "esr"):
            base = self._baseline(concept, index)
            o = self._obs_days(concept, index)
            if base is not None and not o.empty:
                lab_days |= set(o.loc[o["value"] > p.lab_fold * base, "day"])
        # Criterion (ii): a positive radiological progression.
        rad = self._obs_days("radiological_progression", index)
        rad_days = set(rad.loc[rad["value_boolean"] == True, "day"]) if not rad.empty else set()  # noqa: E712
        # Criterion (iii): the daily GC total rises and exceeds 0.5 mg/kg/day (weight on or before that day).
        last = int(exac["day"].max()) + w
        gc = self.gc_daily(index, index + timedelta(days=last))  # gc[d] is day d; day 0 is index
        weights = self._obs_days("body_weight", index)
        weights = weights[weights["value"].notna()].sort_values("day") if not weights.empty else weights
        gc_days: set[int] = set()
        unevaluable: set[int] = set()  # GC increases with no weight on record: criterion (iii) unknown
        for d in range(1, last + 1):
            if gc[d] > gc[d - 1]:
                known = weights[weights["day"] <= d] if not weights.empty else weights
                if known.empty:
                    unevaluable.add(d)
                elif gc[d] > p.gc_increase_mg_per_kg * float(known["value"].iloc[-1]):
                    gc_days.add(d)

        def near(days: set[int], t: int) -> bool:
            return any(max(1, t - w) <= d <= t + w for d in days)

        for t, category in sorted(zip(exac["day"], exac["value_code"], strict=True)):
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




GROUPED_FACTS = ("diagnoses", "exposures", "procedures", "observations", "contacts")


def group_facts(facts: StudyFacts) -> dict[str, dict[str, pd.DataFrame]]:
    """Each per-patient fact table split by patient once, for PatientRecord."""
    return {name: by_patient(getattr(facts, name)) for name in GROUPED_FACTS}
