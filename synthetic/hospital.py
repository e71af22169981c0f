"""A seeded synthetic hospital for the IIM-ILD study, with its own ground truth.

Every patient is *built toward* a planned outcome: either the attrition reason the contract's
rules must give, or a complete row of the ``cohort`` table (group, covariates, follow-up and
event days). The resources are then written so that the outcome follows from them, which makes
the ground truth independent of the pipeline's implementation of the rules: the end-to-end tests
compare what the pipeline derives against what the generator intended.

Treatment choice is confounded by the covariates (older, clinically amyopathic, IVIg-treated
patients get tacrolimus more often, and those covariates also raise the hazards), and the true
hazard ratios are parameters, so IPTW has a bias to correct.
One long module on purpose: a patient's plan and the resources written from it must be read together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Iterator

import numpy as np

from . import fhir_builders as fb
from .fhir_builders import ICD10, LOCAL, LOINC, RXNORM, SNOMED, Resource
from .variants import messy_stream

RETRO_WINDOW = (date(2014, 1, 1), date(2020, 9, 30))
PROSPECTIVE_WINDOW = (date(2018, 1, 1), date(2020, 12, 31))
FOLLOWUP_DAYS = 365
RESEARCH_STUDY_ID = "chictr2100043595"

IS_AGENTS = {"tacrolimus": "42316", "CTX": "3002", "MTX": "6851", "AZA": "1256", "MMF": "68149", "CsA": "3008"}
CONVENTIONAL_ORDER = ["CTX", "MTX", "AZA", "MMF", "CsA"]
PIRFENIDONE = "1592254"
PREDNISONE, METHYLPRED = "8640", "6902"
ILD_CODES = ["J84.10", "J84.89", "J84.9", "J84.112", "J84.116", "J84.117", "J99"]

RETRO_ATTRITION_REASONS = [
    "no_iim_condition", "no_ild_condition", "inclusion_body_myositis", "overlap_myositis", "juvenile_dm",
    "malignancy_within_3y", "no_qualifying_immunosuppressant", "no_glucocorticoid_at_index",
    "index_outside_window", "age_under_18", "mixed_exposure", "death_date_unknown",
]
PROSPECTIVE_ATTRITION_REASONS = [
    "enrolment_outside_window", "no_tacrolimus", "pirfenidone_other_dose", "withdrawn_before_12m",
    "lost_to_follow_up_before_12m",
]
SCALES = ["6mwt", "mmrc", "patient-global-activity", "mmt8", "myoact", "mitax", "mdi", "cat", "hama", "hamd"]


@dataclass(frozen=True)
class TreatmentPropensity:
    """The log-odds of tacrolimus (versus a conventional agent) the hospital's clinicians follow: sicker patients
    (older, amyopathic, higher glucocorticoid dose, IVIg or plasma exchange) get it more often."""

    intercept: float = -1.6
    age_per_year: float = 0.04       # per year over 52
    cadm: float = 1.2
    pred_per_mg: float = 0.02        # per mg/day over 65
    ivig: float = 0.9
    plasma_exchange: float = 0.8
    female: float = 0.2

    def logit(self, age: int, cadm: bool, pred0: float, ivig: bool, pe: bool, female: bool) -> float:
        return (self.intercept + self.age_per_year * (age - 52) + self.cadm * cadm + self.pred_per_mg * (pred0 - 65)
                + self.ivig * ivig + self.plasma_exchange * pe + self.female * female)


@dataclass(frozen=True)
class HospitalParams:
    """The knobs of the synthetic hospital; the defaults give a cohort of the paper's size."""

    seed: int = 20210214
    n_retrospective: int = 250
    n_prospective_enrolled: int = 41
    n_noise: int = 150
    attrition_per_reason: int = 3
    hr_death: float = 0.33
    hr_relapse: float = 0.55
    death_12m_reference: float = 0.22
    relapse_12m_reference: float = 0.45
    lost_to_follow_up_share: float = 0.06
    # Write a seeded share of resources in other legal FHIR shapes (synthetic/variants.py): extra and
    # reordered codings, extensions, narratives, unit spellings, time formats, superseded and
    # entered-in-error copies. The clinical content, and so the truth, is the same either way.
    messy: bool = True
    # Case mix and how the hospital's clinicians choose treatment (multi-site demo: each hospital its own).
    # The defaults are the values the generator always used, so a hospital built without them is unchanged.
    mean_age: float = 52.0
    subset_mix: tuple[float, float, float, float] = (0.45, 0.15, 0.25, 0.15)   # DM, PM, CADM, ASS
    propensity: TreatmentPropensity = TreatmentPropensity()


@dataclass
class Hospital:
    resources: list[Resource]
    truth: list[dict[str, Any]]  # one row per patient: attrition reason or the full cohort row
    params: HospitalParams

    def by_type(self) -> dict[str, list[Resource]]:
        out: dict[str, list[Resource]] = {}
        for r in self.resources:
            out.setdefault(r["resourceType"], []).append(r)
        return out


@dataclass
class _Spec:
    """What one patient is built to be."""

    pid: str
    retro_reason: str | None = None      # planned retrospective attrition reason (None = in cohort)
    group: str | None = None             # forced treatment group
    index: date | None = None            # forced index date
    prospective: str | None = None       # None, "tacrolimus", "combination" or a prospective attrition reason
    edge: str | None = None              # an extra edge case the builder plants


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def completed_years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


class _PatientBuilder:
    """Accumulates one patient's resources and planned truth."""

    def __init__(self, spec: _Spec, rng: np.random.Generator, params: HospitalParams) -> None:
        self.spec, self.rng, self.params = spec, rng, params
        self.pid = spec.pid
        self.resources: list[Resource] = []
        self._n = 0
        self.truth: dict[str, Any] = {"fhir_patient_id": self.pid, "retro_reason": spec.retro_reason,
                                      "prospective": spec.prospective}

    # -- helpers -------------------------------------------------------------------------------
    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{self.pid}-{kind}{self._n}"

    def add(self, res: Resource) -> str:
        self.resources.append(res)
        return res["id"]

    def day(self, index: date, d: int) -> date:
        return index + timedelta(days=int(d))

    def u(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    # -- the patient ---------------------------------------------------------------------------
    def build(self) -> None:
        rng, spec = self.rng, self.spec
        reason = spec.retro_reason
        sex = str(rng.choice(["female", "male"], p=[0.65, 0.35]))
        subset = str(rng.choice(["DM", "PM", "CADM", "ASS"], p=list(self.params.subset_mix)))
        age = int(np.clip(round(rng.normal(self.params.mean_age, 12)), 19, 84))
        if reason == "age_under_18":
            age = self.u(16, 17)
        weight = float(np.clip(round(rng.normal(60, 10), 1), 40, 100))
        pe = rng.random() < 0.12
        ivig = rng.random() < 0.20

        if spec.index is not None:
            index = spec.index
        elif reason == "index_outside_window":
            index = (date(2013, 6, 1) + timedelta(days=self.u(0, 200))) if rng.random() < 0.5 else \
                (date(2020, 10, 1) + timedelta(days=self.u(0, 200)))
        else:
            index = RETRO_WINDOW[0] + timedelta(days=self.u(0, (RETRO_WINDOW[1] - RETRO_WINDOW[0]).days))
        # Birth date imputation (year-only -> 1 Jan, year-month -> the 1st) only ever makes a patient older.
        born = index - timedelta(days=int(age * 365.25) + self.u(1, 360))
        fmt = rng.choice(["full", "year-month", "year"], p=[0.8, 0.1, 0.1]) if reason != "age_under_18" else "full"
        birth_str = {"full": born.isoformat(), "year-month": born.isoformat()[:7], "year": str(born.year)}[fmt]
        imputed = {"full": born, "year-month": born.replace(day=1), "year": date(born.year, 1, 1)}[fmt]
        age = completed_years(imputed, index)

        # Initial glucocorticoid: 0.8-1.5 mg/kg/day prednisolone-equivalent, rounded to 5 mg.
        pred0 = float(max(30, 5 * round(weight * rng.uniform(0.8, 1.5) / 5)))

        group = spec.group
        if group is None:
            # Sicker patients (older, amyopathic, higher GC dose, IVIg or plasma exchange) get tacrolimus
            # more often, so the unadjusted hazard ratio understates its benefit.
            logit = self.params.propensity.logit(age, subset == "CADM", pred0, ivig, pe, sex == "female")
            group = "tacrolimus" if rng.random() < _expit(logit) else "conventional"
        agent = "tacrolimus" if group == "tacrolimus" else str(rng.choice(CONVENTIONAL_ORDER, p=[0.42, 0.25, 0.15, 0.12, 0.06]))

        # Outcome times (days), proportional hazards with the true hazard ratios.
        risk = 0.04 * (age - 52) + 0.8 * (subset == "CADM") + 0.5 * pe + 0.4 * ivig + 0.012 * (pred0 - 65)
        tac = group == "tacrolimus"
        lam_d = -math.log(1 - self.params.death_12m_reference) / FOLLOWUP_DAYS * math.exp(risk + tac * math.log(self.params.hr_death))
        lam_r = -math.log(1 - self.params.relapse_12m_reference) / FOLLOWUP_DAYS * math.exp(
            0.6 * risk + tac * math.log(self.params.hr_relapse))
        t_death = max(1, math.ceil(rng.exponential(1 / lam_d)))
        t_relapse = max(1, math.ceil(rng.exponential(1 / lam_r)))
        ltfu = (rng.random() < self.params.lost_to_follow_up_share and spec.prospective in (None, "lost_to_follow_up_before_12m")
                and reason != "no_glucocorticoid_at_index")
        if spec.prospective == "lost_to_follow_up_before_12m":
            ltfu, t_death = True, 10_000
        if spec.prospective == "withdrawn_before_12m" or reason == "no_glucocorticoid_at_index":
            t_death = 10_000  # they must live past the GC start planted > 30 d after index
        if reason == "no_glucocorticoid_at_index":
            t_relapse = 10_000  # and get no rescue glucocorticoid near index
        last_contact = self.u(60, 330) if ltfu else None

        death_event = t_death <= FOLLOWUP_DAYS and (last_contact is None or t_death <= last_contact)
        followup = t_death if death_event else (last_contact if last_contact is not None else FOLLOWUP_DAYS)
        fu_end = followup  # no resource of this patient is dated after day fu_end (except a later death)
        if t_relapse == t_death:
            t_relapse += 1
        relapse_event = t_relapse <= followup and not (death_event and t_death < t_relapse)

        # -- Patient -----------------------------------------------------------------------------
        deceased: date | bool | None = None
        if reason == "death_date_unknown":
            deceased = True
        elif death_event:
            deceased = self.day(index, t_death)
        elif last_contact is None and FOLLOWUP_DAYS + 30 < t_death <= FOLLOWUP_DAYS + 200:
            deceased = self.day(index, t_death)  # died after the follow-up window: not an event
        self.add(fb.patient(self.pid, sex, birth_str, deceased))

        # -- Diagnoses ---------------------------------------------------------------------------
        # ILD may be coded up to 30 d after index (never after the last contact).
        ild_offset = -self.u(0, 90) if rng.random() < 0.9 or fu_end <= 30 else self.u(1, 30)
        ild_date = self.day(index, ild_offset)
        if reason == "no_qualifying_immunosuppressant" and rng.random() < 0.5:
            ild_date = self.day(index, self.u(40, 120))  # the only immunosuppressant started > 30 d before ILD
            ild_offset = (ild_date - index).days
        respiratory_dm = subset == "DM" and rng.random() < 0.3 and reason != "no_ild_condition"
        iim_date = ild_date if respiratory_dm else ild_date - timedelta(days=self.u(0, 400))
        self._diagnoses(subset, iim_date, respiratory_dm)
        if reason != "no_ild_condition" and not respiratory_dm:
            self._icd(str(rng.choice(ILD_CODES)), ild_date)
        if reason == "no_ild_condition" and rng.random() < 0.5:
            self.add(fb.condition(self._id("cond"), self.pid, ICD10, "J84.10", ild_date, verification="refuted"))
        extra = {"inclusion_body_myositis": "G72.41", "overlap_myositis": "M35.1", "juvenile_dm": "M33.03"}
        if reason in extra:
            self._icd(extra[reason], iim_date + timedelta(days=self.u(0, 30)))
        if reason == "malignancy_within_3y":
            gap = 1095 if rng.random() < 0.5 else self.u(0, 1095)
            self._icd("C34.90", iim_date + timedelta(days=gap * int(rng.choice([-1, 1]))))
        elif spec.edge == "malignancy_3y_plus_1":
            self._icd("C50.911", iim_date - timedelta(days=1096))
        self.truth["first_iim_date"] = iim_date

        # -- Weight, labs ------------------------------------------------------------------------
        has_weight = spec.edge != "no_weight"
        if has_weight:
            self._weight(weight, self.day(index, -self.u(0, 10)))
        ferritin0 = float(round(rng.uniform(200, 1500)))
        esr0 = float(self.u(15, 60))
        base_day = -self.u(0, 5)
        self._lab("2276-4", ferritin0, "ng/mL", self.day(index, base_day))
        self._lab("4537-7", esr0, "mm/h", self.day(index, base_day))
        self._lab("1988-5", round(rng.uniform(0.3, 5), 1), "mg/dL", self.day(index, base_day))
        for d in (30, 90, 180, 270):
            if d <= fu_end:
                self._lab("2276-4", round(ferritin0 * rng.uniform(0.5, 1.5)), "ng/mL", self.day(index, d))
                self._lab("4537-7", round(esr0 * rng.uniform(0.5, 1.5)), "mm/h", self.day(index, d))
        if self.spec.prospective is not None or rng.random() < 0.5:
            mda5 = rng.random() < 0.4
            self.add(fb.observation(self._id("obs"), self.pid, LOCAL, "anti-mda5", self.day(index, -self.u(0, 20)),
                                    valueBoolean=bool(mda5)))

        # -- Treatment ---------------------------------------------------------------------------
        gc_start_offset = -self.u(0, 14) if rng.random() < 0.9 else self.u(1, 20)
        if reason == "no_glucocorticoid_at_index":
            gc_start_offset = self.u(31, 60)
        gc_start_offset = min(gc_start_offset, fu_end)
        pred_at_index = self._gc_taper(index, gc_start_offset, pred0, fu_end)
        if rng.random() < 0.1 and gc_start_offset <= 0:
            # A methylprednisolone IV pulse, 0.5 g/day ending on the index day, on top of the oral taper.
            self.add(fb.medication_statement(self._id("ms"), self.pid, RXNORM, METHYLPRED, self.day(index, -2),
                                             self.day(index, 0), dose=0.5, unit="g", frequency=1))
            pred_at_index += 625.0
        self.truth["initial_pred_mg_day"] = pred_at_index if gc_start_offset <= 0 else 0.0

        is_end = None if rng.random() < 0.3 else self.day(index, fu_end if fu_end < FOLLOWUP_DAYS else FOLLOWUP_DAYS + self.u(0, 30))
        is_status = "active" if is_end is None else "completed"
        if reason == "no_qualifying_immunosuppressant":
            if ild_offset > 30:  # the statement below starts before ILD - 30 d and does not qualify
                self._drug(agent, index, is_end, is_status)
        elif reason == "mixed_exposure":
            self._drug("tacrolimus", index, is_end, is_status)
            self._drug("CTX", self.day(index, self.u(0, 200)), None, "active")
        else:
            self._drug(agent, index, is_end, is_status)
            if agent != "tacrolimus" and spec.edge == "tie_at_index":
                later = CONVENTIONAL_ORDER[min(len(CONVENTIONAL_ORDER) - 1, CONVENTIONAL_ORDER.index(agent) + 1)]
                if later != agent:
                    self._drug(later, index, is_end, is_status)
            elif agent != "tacrolimus" and reason is None and rng.random() < 0.15 and fu_end > 150:
                self._drug(str(rng.choice(["MMF", "AZA"])), self.day(index, self.u(100, 150)), is_end, is_status)
            if spec.edge == "prior_mtx" and ild_offset <= 0:
                start = ild_date - timedelta(days=30 + self.u(30, 300))
                self._drug("MTX", start, start + timedelta(days=self.u(20, 50)), "completed")
            if agent != "tacrolimus" and spec.edge == "tacrolimus_entered_in_error":
                self._drug("tacrolimus", self.day(index, 5), None, "entered-in-error")
        # With a tie at index the planted second agent comes later in the contract's order, so the first wins.
        self.truth["conventional_agent"] = None if agent == "tacrolimus" else agent

        pe_day = self.u(-30, min(30, fu_end)) if pe else (self.u(31, 60) if rng.random() < 0.05 and fu_end > 60 else None)
        if pe_day is not None:
            system, code = (SNOMED, "127788007") if rng.random() < 0.7 else (LOCAL, "plasma-exchange")
            self.add(fb.procedure(self._id("proc"), self.pid, system, code, self.day(index, pe_day)))
        ivig_day = self.u(-30, min(30, fu_end - 4)) if ivig else None
        if ivig_day is not None:
            self.add(fb.medication_statement(self._id("ms"), self.pid, LOCAL, "ivig", self.day(index, ivig_day),
                                             self.day(index, ivig_day + 4), dose=20, unit="g", frequency=1))

        # -- Events ------------------------------------------------------------------------------
        criterion_days = self._relapses(index, t_relapse if relapse_event else None, fu_end, has_weight, weight,
                                        pred0, gc_start_offset, death_event, t_death)
        if gc_start_offset <= 0:
            self._noise_exacerbations(index, fu_end, criterion_days)
        if not death_event and last_contact is None:
            # A routine visit at the end of follow-up: the last contact that makes day 365 observed.
            self._weight(weight, self.day(index, FOLLOWUP_DAYS + self.u(0, 20))) if has_weight else \
                self._lab("4537-7", esr0, "mm/h", self.day(index, FOLLOWUP_DAYS + self.u(0, 20)))
        self._adverse_events(index, fu_end)

        self.truth.update({
            "group": group, "index_date": index, "age": age, "sex": sex,
            "diagnosis_subset": subset, "plasma_exchange": int(pe_day is not None and -30 <= pe_day <= 30),
            "ivig": int(ivig_day is not None), "followup_days": followup,
            "death_event": int(death_event), "death_days": followup,
        })
        if self.spec.prospective is not None:
            self._prospective(index, fu_end)
        self._stopped_for_adverse_event(index, fu_end)

    def _stopped_for_adverse_event(self, index: date, fu_end: int) -> None:
        """Some glucocorticoid statements ending in follow-up were stopped because of an adverse event.

        Drawn from a generator of its own, after everything else, so no earlier draw moves; the
        exposure is unchanged (only ``entered-in-error``/``not-taken`` statuses are ignored)."""
        rng = np.random.default_rng([self.params.seed, int(self.pid[3:]), 7])
        if rng.random() >= 0.15:
            return
        stops = [r for r in self.resources if r["resourceType"] == "MedicationStatement"
                 and r["medicationCodeableConcept"]["coding"][0]["code"] in (PREDNISONE, METHYLPRED)
                 and "end" in r.get("effectivePeriod", {}) and index.isoformat() <= r["effectivePeriod"]["end"]
                 <= self.day(index, fu_end).isoformat()]
        if stops:
            stopped = stops[int(rng.integers(0, len(stops)))]
            stopped["status"] = "stopped"
            stopped["statusReason"] = [{"coding": [{"system": "urn:oid:2.16.840.1.113883.3.9999.3", "code": "AE-STOP"},
                                                   {"system": LOCAL, "code": "adverse-event"}]}]

    # -- pieces --------------------------------------------------------------------------------
    def _icd(self, code: str, when: date) -> None:
        if self.rng.random() < 0.3:
            code = code.replace(".", "")
        self.add(fb.condition(self._id("cond"), self.pid, ICD10, code, when, recorded_only=self.rng.random() < 0.1))

    def _diagnoses(self, subset: str, when: date, respiratory_dm: bool) -> None:
        if subset == "DM":
            self._icd("M33.11" if respiratory_dm else str(self.rng.choice(["M33.10", "M33.19", "M33.90", "M33.99"])), when)
        elif subset == "PM":
            self._icd(str(self.rng.choice(["M33.20", "M33.29"])), when)
        elif subset == "CADM":
            self.add(fb.condition(self._id("cond"), self.pid, LOCAL, "cadm", when))
            if self.rng.random() < 0.5:
                self._icd("M33.10", when)
        else:
            self.add(fb.condition(self._id("cond"), self.pid, LOCAL, "antisynthetase-syndrome", when))
            if self.rng.random() < 0.5:
                self._icd("M33.20", when)

    def _weight(self, kg: float, when: date) -> None:
        if self.rng.random() < 0.1:
            value = fb.quantity(round(kg / 0.45359237, 1), "[lb_av]")
        else:
            value = fb.quantity(kg, "kg")
        self.add(fb.observation(self._id("obs"), self.pid, LOINC, "29463-7", when, valueQuantity=value))

    def _lab(self, loinc: str, value: float, unit: str, when: date) -> None:
        # Some results carry a local time with the hospital's UTC offset: the clinical day is the local date.
        stamp: date | str = when if self.rng.random() < 0.85 else f"{when.isoformat()}T{self.u(0, 23):02d}:{self.u(0, 59):02d}:00+08:00"
        self.add(fb.observation(self._id("obs"), self.pid, LOINC, loinc, stamp, valueQuantity=fb.quantity(value, unit)))

    def _drug(self, agent: str, start: date, end: date | None, status: str) -> str:
        dose, freq = {"tacrolimus": (1.5, 2), "CTX": (100, 1), "MTX": (15, 1), "AZA": (50, 2), "MMF": (750, 2),
                      "CsA": (100, 2)}[agent]
        if agent == "MTX":
            return self.add(fb.medication_statement(self._id("ms"), self.pid, RXNORM, IS_AGENTS[agent], start, end,
                                                    dose=dose, frequency=1, period=1, period_unit="wk", status=status))
        return self.add(fb.medication_statement(self._id("ms"), self.pid, RXNORM, IS_AGENTS[agent], start, end,
                                                dose=dose, frequency=freq, status=status))

    def _gc_taper(self, index: date, start_offset: int, pred0: float, fu_end: int) -> float:
        """Consecutive, non-overlapping statements of falling dose (the paper's taper); returns the dose at index."""
        use_mp = self.rng.random() < 0.2
        d, dose, at_index = start_offset, pred0, 0.0
        first = True
        while d <= fu_end:
            length = 28
            end = min(d + length - 1, fu_end)
            if use_mp and first:
                mp = dose / 1.25
                self.add(fb.medication_statement(self._id("ms"), self.pid, RXNORM, METHYLPRED, self.day(index, d),
                                                 self.day(index, end), dose=mp, frequency=1))
            elif dose >= 20 and self.rng.random() < 0.3:
                self.add(fb.medication_statement(self._id("ms"), self.pid, RXNORM, PREDNISONE, self.day(index, d),
                                                 self.day(index, end), dose=dose / 2, frequency=2))
            else:
                self.add(fb.medication_statement(self._id("ms"), self.pid, RXNORM, PREDNISONE, self.day(index, d),
                                                 self.day(index, end), dose=dose, frequency=1))
            if d <= 0 <= end:
                at_index = dose
            first = False
            d = end + 1
            dose = max(5.0, dose - (5.0 if dose > 20 else 2.5))
        return at_index

    def _relapses(self, index: date, t_relapse: int | None, fu_end: int, has_weight: bool, weight: float,
                  pred0: float, gc_start: int, death_event: bool, t_death: int) -> list[int]:
        """Plant the first relapse (and maybe a later respiratory one); return days of criterion events."""
        rng = self.rng
        days: list[int] = []
        self.truth.update({"relapse_event": 0, "relapse_days": fu_end, "resp_relapse_event": 0,
                           "resp_relapse_days": fu_end, "relapse_criterion": None})
        if t_relapse is None:
            return days
        criteria = ["ferritin_esr", "radiological", "gc_increase"] if has_weight else ["ferritin_esr", "radiological"]
        criterion = str(rng.choice(criteria))
        category = str(rng.choice(["respiratory", "muscular", "skin", "general"], p=[0.5, 0.2, 0.15, 0.15]))
        self._exacerbation(index, t_relapse, category)
        lo, hi = max(1, t_relapse - 3), min(fu_end, t_relapse + 3)
        cday = self.u(lo, hi)
        days.append(cday)
        if criterion == "ferritin_esr":
            ferritin0 = self._baseline("2276-4")
            self._lab("2276-4", round(ferritin0 * rng.uniform(2.5, 4)), "ng/mL", self.day(index, cday))
        elif criterion == "radiological":
            self.add(fb.observation(self._id("obs"), self.pid, LOCAL, "radiological-progression", self.day(index, cday),
                                    valueBoolean=True))
        else:
            rescue = float(5 * math.ceil(weight * rng.uniform(0.8, 1.2) / 5))
            self.add(fb.medication_statement(self._id("ms"), self.pid, RXNORM, PREDNISONE, self.day(index, cday),
                                             self.day(index, min(fu_end, cday + 13)), dose=rescue, frequency=1))
        self.truth.update({"relapse_event": 1, "relapse_days": t_relapse, "relapse_criterion": criterion})
        if category == "respiratory" and criterion == "radiological":
            self.truth.update({"resp_relapse_event": 1, "resp_relapse_days": t_relapse})
        elif rng.random() < 0.3:
            t2 = t_relapse + self.u(30, 120)
            if t2 <= fu_end and not (death_event and t_death <= t2):
                self._exacerbation(index, t2, "respiratory")
                c2 = self.u(max(1, t2 - 3), min(fu_end, t2 + 3))
                self.add(fb.observation(self._id("obs"), self.pid, LOCAL, "radiological-progression", self.day(index, c2),
                                        valueBoolean=True))
                days += [t2, c2]
                self.truth.update({"resp_relapse_event": 1, "resp_relapse_days": t2})
        days.append(t_relapse)
        return days

    def _baseline(self, loinc: str) -> float:
        for r in self.resources:
            if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == loinc:
                return float(r["valueQuantity"]["value"])
        raise AssertionError("baseline lab planted before relapses")

    def _exacerbation(self, index: date, d: int, category: str) -> None:
        self.add(fb.observation(self._id("obs"), self.pid, LOCAL, "symptom-exacerbation", self.day(index, d),
                                valueCodeableConcept=fb.concept(LOCAL, category)))

    def _noise_exacerbations(self, index: date, fu_end: int, criterion_days: list[int]) -> None:
        """Exacerbations with no supporting criterion within 14 days: not relapses."""
        for _ in range(int(self.rng.integers(0, 3))):
            s = self.u(1, max(1, fu_end))
            if any(abs(s - c) <= 17 for c in criterion_days):
                continue
            self._exacerbation(index, s, str(self.rng.choice(["muscular", "skin", "general"])))
            self.add(fb.observation(self._id("obs"), self.pid, LOCAL, "radiological-progression", self.day(index, s),
                                    valueBoolean=False))

    def _adverse_events(self, index: date, fu_end: int) -> None:
        for _ in range(int(self.rng.poisson(0.8))):
            cat = str(self.rng.choice(["infection", "opportunistic-infection", "glucose-metabolism", "electrolyte",
                                       "gastrointestinal", "hepatic", "renal", "hematologic", "other"]))
            suspect = next((r["id"] for r in self.resources if r["resourceType"] == "MedicationStatement"
                            and r["medicationCodeableConcept"]["coding"][0]["code"] in IS_AGENTS.values()), None)
            self.add(fb.adverse_event(self._id("ae"), self.pid, cat, self.day(index, self.u(1, max(1, fu_end))),
                                      serious=self.rng.random() < 0.2, suspect=suspect))

    def _prospective(self, index: date, fu_end: int) -> None:
        """ResearchSubject, pirfenidone, visits with scales and HRCT for an enrolled patient."""
        plan, rng = self.spec.prospective, self.rng
        enrolled = index - timedelta(days=self.u(0, 7))
        if plan == "enrolment_outside_window":
            enrolled = date(2017, 12, 1) + timedelta(days=self.u(0, 20))
        # Completers leave the study at 12 months (or at death); lost patients are never formally closed.
        status, end = "off-study", self.day(index, min(fu_end, FOLLOWUP_DAYS))
        if plan == "withdrawn_before_12m":
            status, end = "withdrawn", self.day(index, self.u(60, 300))
        elif plan == "lost_to_follow_up_before_12m":
            status, end = "on-study", None
        self.add(fb.research_subject(self._id("rs"), self.pid, RESEARCH_STUDY_ID, enrolled, status=status, end=end))
        self.truth["enrolment_date"] = enrolled
        if plan == "combination" or plan == "pirfenidone_other_dose":
            per_dose, freq = (200, 3) if plan == "pirfenidone_other_dose" or rng.random() < 0.5 else (300, 3)
            if plan == "pirfenidone_other_dose":
                per_dose = 600
            self.add(fb.medication_statement(self._id("ms"), self.pid, RXNORM, PIRFENIDONE,
                                             self.day(index, self.u(0, min(60, fu_end))), self.day(index, fu_end), dose=per_dose,
                                             frequency=freq))
        improvement = 1.4 if plan == "combination" else 1.0
        for nominal in (0, 30, 90, 180, 365):
            d = nominal + self.u(-3, 3) if nominal else -self.u(0, 5)
            if fu_end < FOLLOWUP_DAYS and d > fu_end:
                break
            for scale in SCALES:
                base = {"6mwt": 300.0, "mmt8": 110.0}.get(scale, 10.0)
                progress = nominal / 365 * improvement
                value = base * (1 + 0.4 * progress) if scale in ("6mwt", "mmt8") else base * (1 - 0.5 * progress)
                value = round(value * rng.uniform(0.85, 1.15)) if scale != "6mwt" else round(value * rng.uniform(0.85, 1.15), 1)
                val = {"valueQuantity": fb.quantity(value, "m")} if scale == "6mwt" else {"valueInteger": int(value)}
                self.add(fb.observation(self._id("obs"), self.pid, LOCAL, scale, self.day(index, d), **val))
            if nominal in (0, 365):
                comps = {c: int(max(0, round(rng.normal(4, 1.5) * (1 - 0.3 * (nominal == 365) * improvement))))
                         for c in ("ground-glass", "consolidation", "reticular", "traction-bronchiectasis")}
                obs = fb.observation(self._id("obs"), self.pid, LOCAL, "hrct-score", self.day(index, d),
                                     valueInteger=sum(comps.values()))
                obs["component"] = [{"code": fb.concept(LOCAL, c), "valueInteger": v} for c, v in comps.items()]
                self.add(obs)
                self.add(fb.observation(self._id("obs"), self.pid, LOCAL, "hrct-pattern", self.day(index, d),
                                        valueCodeableConcept=fb.concept(LOCAL, str(rng.choice(["nsip", "uip", "op", "nsip-op"])))))


def _noise_patient(pid: str, rng: np.random.Generator) -> list[Resource]:
    """Unrelated hospital patients: hypertension, diabetes, a lab or two."""
    born = date(1930, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 70)))
    seen = date(2015, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 6)))
    out: list[Resource] = [fb.patient(pid, str(rng.choice(["female", "male"])), born.isoformat())]
    out.append(fb.condition(f"{pid}-cond1", pid, ICD10, str(rng.choice(["I10", "E11.9", "J45.909", "M05.79"])), seen))
    out.append(fb.observation(f"{pid}-obs2", pid, LOINC, "1988-5", seen,
                              valueQuantity=fb.quantity(round(float(rng.uniform(0.5, 20)), 1), "mg/L")))
    if rng.random() < 0.3:
        out.append(fb.medication_statement(f"{pid}-ms3", pid, RXNORM, PREDNISONE, seen, seen + timedelta(days=10),
                                           dose=20, frequency=1))
    if rng.random() < 0.2:  # ILD without myositis
        out.append(fb.condition(f"{pid}-cond4", pid, ICD10, "J84.10", seen))
    if rng.random() < 0.3:  # a partial onset date (year-month), legal FHIR and imputed to the 1st
        out[1]["onsetDateTime"] = out[1]["onsetDateTime"][:7]
    return out


def _specs(params: HospitalParams, rng: np.random.Generator) -> Iterator[_Spec]:
    n = 0

    def next_pid() -> str:
        nonlocal n
        n += 1
        return f"pt-{n:05d}"

    edges = ["no_weight", "malignancy_3y_plus_1", "tie_at_index", "prior_mtx", "tacrolimus_entered_in_error"]
    for i in range(params.n_retrospective):
        yield _Spec(next_pid(), edge=edges[i % len(edges)] if i % 7 == 0 else None)
    for reason in RETRO_ATTRITION_REASONS[1:]:  # no_iim_condition comes from the noise patients
        for _ in range(params.attrition_per_reason):
            yield _Spec(next_pid(), retro_reason=reason)
    # The prospective cohort: 22 combination, 12 tacrolimus and the paper's exclusions (scaled).
    k = params.n_prospective_enrolled
    n_excluded = {"enrolment_outside_window": 1, "no_tacrolimus": 1, "pirfenidone_other_dose": 1,
                  "withdrawn_before_12m": 2, "lost_to_follow_up_before_12m": 2} if k >= 10 else {}
    n_rest = k - sum(n_excluded.values())
    n_combination = round(n_rest * 22 / 34)
    plans = ["combination"] * n_combination + ["tacrolimus"] * (n_rest - n_combination)
    plans += [reason for reason, m in n_excluded.items() for _ in range(m)]
    for plan in plans:
        start = PROSPECTIVE_WINDOW[0] + timedelta(days=int(rng.integers(0, (PROSPECTIVE_WINDOW[1] - PROSPECTIVE_WINDOW[0]).days)))
        group = "conventional" if plan == "no_tacrolimus" else "tacrolimus"
        yield _Spec(next_pid(), group=group, index=start, prospective=plan)


@dataclass(frozen=True)
class PatientRecord:
    """One patient as the streamed generator yields it: their resources (messy dialect applied) and truth row.

    The hospital-level ResearchStudy comes first, as a record with no truth row."""

    resources: list[Resource]
    truth: dict[str, Any] | None


def stream_hospital(params: HospitalParams = HospitalParams()) -> Iterator[PatientRecord]:
    """The hospital patient by patient, so that writing it out needs the memory of one patient, not of N.

    Concatenating every record's resources (and truth rows) gives ``generate_hospital(params)`` exactly:
    each patient draws from a generator seeded by its own id, and the messy dialect's single generator
    is advanced resource by resource in the same order either way."""
    rng = np.random.default_rng(params.seed)
    messy = messy_stream(params.seed) if params.messy else None

    def record(resources: list[Resource], truth: dict[str, Any] | None) -> PatientRecord:
        return PatientRecord(messy(resources) if messy else resources, truth)

    yield record([fb.research_study(RESEARCH_STUDY_ID)], None)
    for spec in _specs(params, rng):
        b = _PatientBuilder(spec, np.random.default_rng([params.seed, int(spec.pid[3:])]), params)
        b.build()
        yield record(b.resources, _finalise_truth(b.truth))
    for j in range(params.n_noise):
        pid = f"nz-{j + 1:05d}"
        yield record(_noise_patient(pid, np.random.default_rng([params.seed, 10**6 + j])),
                     {"fhir_patient_id": pid, "retro_reason": "no_iim_condition", "prospective": None})


def generate_hospital(params: HospitalParams = HospitalParams()) -> Hospital:
    """Build the whole hospital deterministically from ``params.seed`` (in memory: see ``stream_hospital``)."""
    resources: list[Resource] = []
    truth: list[dict[str, Any]] = []
    for patient in stream_hospital(params):
        resources += patient.resources
        if patient.truth is not None:
            truth.append(patient.truth)
    return Hospital(resources=resources, truth=truth, params=params)


def _finalise_truth(t: dict[str, Any]) -> dict[str, Any]:
    """Apply the planned reason's consequences (in attrition order) to the planned row."""
    if t["retro_reason"] is None:
        if not (RETRO_WINDOW[0] <= t["index_date"] <= RETRO_WINDOW[1]):
            t["retro_reason"] = "index_outside_window"
        elif t["age"] < 18:
            t["retro_reason"] = "age_under_18"
    if t["group"] == "tacrolimus":
        t["conventional_agent"] = None
    return t
