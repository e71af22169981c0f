"""Normalised clinical facts: the flattened FHIR tables read through the concept map and the
contract's status rules (study-contract.md section 1), each rule applied here and only here.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Callable, Iterable

import pandas as pd

from etl.fhir.flatten import OBSERVATION_COMPONENTS, clinical_date
from etl.fhir.units import MASS_TO_MG

from .concepts import ConceptMap

IGNORED_CONDITION_VERIFICATION = {"refuted", "entered-in-error"}  # concepts of the concept map's condition_verification
IGNORED_MEDICATION_STATUS = {"entered-in-error", "not-taken"}
IGNORED_OBSERVATION_STATUS = {"entered-in-error", "cancelled"}
FINAL_OBSERVATION_STATUS = {"final", "amended", "corrected"}
PERIOD_UNIT_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.0, "a": 365.0}
IMMUNOSUPPRESSANTS = ("tacrolimus", "CTX", "MTX", "AZA", "MMF", "CsA")
CONVENTIONAL = ("CTX", "MTX", "AZA", "MMF", "CsA")  # also the tie-break order for conventional_agent
OPEN_END = date(9999, 12, 31)


@dataclass(frozen=True)
class StudyFacts:
    patients: pd.DataFrame       # patient_id, sex, birth_date (imputed), deceased, deceased_date
    diagnoses: pd.DataFrame      # patient_id, concept, date
    exposures: pd.DataFrame      # statement_id, patient_id, concept, start, end (inclusive; OPEN_END = ongoing),
                                 # daily_dose_mg, pred_factor, stopped_for_adverse_event
    procedures: pd.DataFrame     # patient_id, concept, date
    observations: pd.DataFrame   # observation_id, patient_id, concept, date, value, value_code, value_boolean
                                 # (HRCT components appear as their own concepts, e.g. hrct_reticular)
    adverse_events: pd.DataFrame  # event_id, patient_id, category, date, serious, suspect_statement_ids (tuple)
    enrolments: pd.DataFrame     # patient_id, study_id, study_identifiers ("system|value;..."), status, start, end
    contacts: pd.DataFrame       # patient_id, date: every clinical date on a counted resource
    quality: pd.DataFrame        # patient_id, issue: facts that could not be read


def concepts_per_row(concepts: ConceptMap, domain: str, codings: pd.Series) -> list[frozenset[str]]:
    """The concepts each row's codings carry (a set per row); each distinct coding set is looked up once."""
    cache: dict[object, frozenset[str]] = {}
    out = []
    for value in codings:
        key = value if isinstance(value, tuple) else ()
        if key not in cache:
            cache[key] = concepts.concepts_of(domain, key)
        out.append(cache[key])
    return out


def single_value(found: frozenset[str]) -> str | None:
    """A coded value's concept when its codings agree on one; codings that disagree give no value."""
    return next(iter(found)) if len(found) == 1 else None


def daily_dose_mg(dose_value: float | None, unit: str | None, frequency: float | None, period: float | None,
                  period_unit: str | None) -> float | None:
    """Dose per administration (mg; g converted) times administrations per day; no timing = once daily."""
    if dose_value is None or pd.isna(dose_value):
        return None
    to_mg = MASS_TO_MG.get((unit or "").strip())
    if to_mg is None:
        return None
    if frequency is None or pd.isna(frequency):
        per_day = 1.0
    else:
        days = PERIOD_UNIT_DAYS.get(period_unit or "d")
        if days is None:
            return None
        per_day = float(frequency) / (float(period if period is not None and not pd.isna(period) else 1) * days)
    return float(dose_value) * to_mg * per_day


def exposure_intervals(statements: pd.DataFrame) -> pd.DataFrame:
    """Each statement's exposure as an inclusive [start, end] interval, per the contract.

    An explicit end is kept (explicit statements may overlap: their doses add). A statement
    without an end, or an ``active`` one given by effectiveDateTime, is ongoing until the day
    before the next statement of the same ingredient starts; a non-active effectiveDateTime
    covers that single day. The ingredient is the concept, except for glucocorticoids, where it
    is the concept map's ``ingredient`` (prednisone and methylprednisolone are different ingredients
    of one concept).
    """
    df = statements.copy()
    df["ingredient"] = df["concept"].where(df["concept"] != "glucocorticoid", df["concept"] + ":" + df["ingredient"].astype(str))
    ongoing = (df["effective_kind"] == "period") & df["end"].isna() | \
              (df["effective_kind"] == "datetime") & (df["status"] == "active")
    single_day = (df["effective_kind"] == "datetime") & ~ongoing
    df.loc[single_day, "end"] = df.loc[single_day, "start"]
    df["ongoing"] = ongoing
    df = df.sort_values(["patient_id", "ingredient", "start", "statement_id"])
    # Rows of one (patient, ingredient) are adjacent after the sort, starts ascending: the next start is the
    # first later one of the same run (a loop over lists: a pandas group per patient cost most of build_facts).
    keys = [(pid if isinstance(pid, str) else None, ing)
            for pid, ing in zip(df["patient_id"].tolist(), df["ingredient"].tolist(), strict=True)]
    starts = df["start"].tolist()
    next_start: list[date | None] = [None] * len(starts)
    run_end = len(starts)
    for i in range(len(starts) - 1, -1, -1):
        if i + 1 < len(starts) and keys[i + 1] != keys[i]:
            run_end = i + 1
        next_start[i] = next((t for t in starts[i + 1:run_end] if t > starts[i]), None)
    df["next_start"] = next_start
    df["end"] = [
        (ns - timedelta(days=1) if ns is not None else OPEN_END) if og else e
        for og, e, ns in zip(df["ongoing"], df["end"], df["next_start"], strict=True)
    ]
    return df.drop(columns=["ongoing", "next_start", "ingredient"])


def _each_once(rule: Callable[..., Any], rows: Iterable[tuple[Any, ...]]) -> list[Any]:
    """``rule(*row)`` for every row, computed once per distinct row: doses and values repeat across a
    hospital's statements and results. A row holding NaN is rarely equal to itself and is then computed
    again, never shared with another."""
    seen: dict[tuple[Any, ...], Any] = {}
    out = []
    for row in rows:
        if row in seen:
            out.append(seen[row])
        else:
            out.append(seen.setdefault(row, rule(*row)))
    return out


def _undated(facts: pd.DataFrame, date_column: str, issue: str) -> list[dict[str, str]]:
    """One data-quality row per patient with a fact of a mapped concept that has no date (``facts`` holds
    mapped rows only). A fact without a patient is already counted as resource_without_patient_subject."""
    return [{"patient_id": p, "issue": issue} for p in facts.loc[facts[date_column].isna(), "patient_id"].dropna().unique()]


def build_facts(flat: dict[str, pd.DataFrame], concepts: ConceptMap) -> StudyFacts:
    """From the flattened tables (``etl.fhir.types.flatten_all``) to the study's facts."""
    quality: list[dict[str, str]] = []

    pat = flat["Patient"]
    # Facts that cannot be attached to a patient are counted, never dropped silently: no subject at all, or
    # a subject that is not a Patient on the server (the id is counted as the "patient" in data quality).
    known = set(pat["patient_id"])
    for rtype in ("Condition", "MedicationStatement", "Procedure", "Observation", "AdverseEvent", "ResearchSubject"):
        frame = flat[rtype]
        id_col = frame.columns[0]
        missing = frame[frame["patient_id"].isna()][id_col].unique()
        quality += [{"patient_id": f"{rtype}/{rid}", "issue": "resource_without_patient_subject"} for rid in missing]
        orphans = set(frame["patient_id"].dropna()) - known
        quality += [{"patient_id": pid, "issue": "reference_to_absent_patient"} for pid in orphans]
    patients = pd.DataFrame({
        "patient_id": pat["patient_id"], "sex": pat["gender"],
        # Year-only and year-month birth dates are imputed to the first day, as every partial date.
        "birth_date": [clinical_date(v) for v in pat["birth_date"]],
        "deceased": pat["deceased"].astype(bool), "deceased_date": pat["deceased_date"],
    })

    cond = flat["Condition"]
    verification = concepts_per_row(concepts, "condition_verification", cond["verification_codings"])
    cond = cond[pd.Series([not (v & IGNORED_CONDITION_VERIFICATION) for v in verification], index=cond.index, dtype=bool)]
    # Two codings of one resource that carry the same concept (M33.10 and M3310, two ESR LOINCs) are one fact.
    # An undated Condition is kept (date None): it still counts where the contract asks only whether a diagnosis
    # exists (inclusion, the exclusions without a window, the diagnosis subset); the rules that measure from a
    # date read the dated ones only (PatientRecord.dx_dates), and it is counted in data quality.
    diagnoses = concepts.annotate("conditions", cond).drop_duplicates(["condition_id", "concept"])[["patient_id", "concept", "date"]]
    quality += _undated(diagnoses, "date", "condition_without_date")

    meds_counted = flat["MedicationStatement"]
    meds_counted = meds_counted[~meds_counted["status"].isin(IGNORED_MEDICATION_STATUS)]
    # A statement without a start cannot be placed on any day: not an exposure, but counted when it names a concept.
    quality += _undated(concepts.annotate("medications", meds_counted[meds_counted["start"].isna()]), "start",
                        "medication_statement_without_date")
    meds_not_ignored = meds_counted  # its end dates are still contacts (the contract's "effective start or end")
    meds_counted = meds_counted[meds_counted["start"].notna()]
    meds = concepts.annotate("medications", meds_counted)
    # One row per statement and concept; of two glucocorticoid codings naming different drugs (a coding
    # error), the first ingredient by name wins, so the coding order cannot choose.
    meds = meds.sort_values(["statement_id", "concept", "ingredient"], kind="stable").drop_duplicates(["statement_id", "concept"])
    dosing = meds[["dose_value", "dose_unit", "frequency", "period", "period_unit"]]
    meds["daily_dose_mg"] = _each_once(daily_dose_mg, dosing.itertuples(index=False, name=None))
    no_dose = meds["daily_dose_mg"].isna() & (meds["concept"] == "glucocorticoid")
    # A resource without a patient is already counted as resource_without_patient_subject: no NaN "patient" here.
    quality += [{"patient_id": p, "issue": "glucocorticoid_dose_not_computable"} for p in meds.loc[no_dose, "patient_id"].dropna()]
    meds["pred_factor"] = meds["factor"].where(meds["concept"] == "glucocorticoid")
    meds["stopped_for_adverse_event"] = ["adverse-event" in reasons for reasons in
                                         concepts_per_row(concepts, "medication_status_reasons", meds["status_reason_codings"])]
    exposures = exposure_intervals(meds)[["statement_id", "patient_id", "concept", "start", "end", "daily_dose_mg",
                                          "pred_factor", "stopped_for_adverse_event"]]

    proc = flat["Procedure"]
    proc = proc[proc["status"] == "completed"]
    quality += _undated(concepts.annotate("procedures", proc[proc["date"].isna()]), "date", "procedure_without_date")
    proc = proc[proc["date"].notna()]
    procedures = concepts.annotate("procedures", proc).drop_duplicates(["procedure_id", "concept"])[["patient_id", "concept", "date"]]

    obs_counted = flat["Observation"]
    obs_counted = obs_counted[~obs_counted["status"].isin(IGNORED_OBSERVATION_STATUS)]
    quality += _undated(concepts.annotate("observations", obs_counted[obs_counted["date"].isna()]), "date",
                        "observation_without_date")
    obs_counted = obs_counted[obs_counted["date"].notna()]
    obs = concepts.annotate("observations", obs_counted).drop_duplicates(["observation_id", "concept"])
    # A preliminary result is superseded by a final/amended one of the same concept and day.
    finals = obs[obs["status"].isin(FINAL_OBSERVATION_STATUS)][["patient_id", "concept", "date"]].drop_duplicates()
    finals["_final"] = True
    obs = obs.merge(finals, on=["patient_id", "concept", "date"], how="left")
    obs = obs[~((obs["status"] == "preliminary") & obs["_final"].notna())]  # matched rows hold True, the others NaN
    values = _each_once(lambda c, q, u, i: concepts.to_canonical(c, q, u) if q is not None and not pd.isna(q) else
                        (float(i) if i is not None and not pd.isna(i) else None),
                        obs[["concept", "value_quantity", "value_unit", "value_integer"]].itertuples(index=False, name=None))
    value_concepts = concepts_per_row(concepts, "observation_values", obs["value_codings"])
    obs = obs.assign(value=values, value_code=[single_value(v) for v in value_concepts])
    conflicting = [len(v) > 1 for v in value_concepts]
    quality += [{"patient_id": p, "issue": "observation_value_codings_disagree"} for p in obs.loc[conflicting, "patient_id"].dropna()]
    bad_unit = obs["value_quantity"].notna() & obs["value"].isna()
    quality += [{"patient_id": p, "issue": "observation_unit_not_convertible"} for p in obs.loc[bad_unit, "patient_id"].dropna()]
    obs_columns = ["observation_id", "patient_id", "concept", "date", "value", "value_code", "value_boolean"]
    comps = concepts.annotate("observations", flat[OBSERVATION_COMPONENTS])
    comps = comps.merge(obs[["observation_id", "patient_id", "date"]].drop_duplicates("observation_id"), on="observation_id")
    comps = comps.assign(value=[float(i) if i is not None and not pd.isna(i) else (float(q) if q is not None and not pd.isna(q) else None)
                                for i, q in comps[["value_integer", "value_quantity"]].itertuples(index=False)],
                         value_code=[single_value(v) for v in concepts_per_row(concepts, "observation_values", comps["value_codings"])])
    observations = pd.concat([obs[obs_columns], comps[obs_columns]], ignore_index=True)

    ae_actual = flat["AdverseEvent"]
    ae_actual = ae_actual[ae_actual["actuality"] == "actual"]
    ae = (concepts.annotate("adverse_event_categories", ae_actual).drop_duplicates(["event_id", "concept"])
          .rename(columns={"concept": "category"}))
    # An event none of whose codings names a category (say, coded in SNOMED only) cannot enter the safety tables;
    # one without a date cannot be placed in follow-up. Each is counted rather than dropped unseen.
    unmapped = ~ae_actual["event_id"].isin(set(ae["event_id"]))
    quality += [{"patient_id": p, "issue": "adverse_event_category_not_mapped"}
                for p in ae_actual.loc[unmapped, "patient_id"].dropna().unique()]
    quality += _undated(ae, "date", "adverse_event_without_date")
    ae = ae[ae["date"].notna()].copy()
    ae_counted = ae_actual[ae_actual["date"].notna()]
    ae["serious"] = ["serious" in found for found in concepts_per_row(concepts, "adverse_event_seriousness", ae["seriousness_codings"])]
    adverse_events = ae[["event_id", "patient_id", "category", "date", "serious", "suspect_statement_ids"]]

    rs = flat["ResearchSubject"]
    studies = flat["ResearchStudy"].dropna(subset=["identifier_value"])
    identifiers = (studies.assign(identifier=studies["identifier_system"].fillna("") + "|" + studies["identifier_value"])
                   .groupby("study_id")["identifier"].agg(";".join).rename("study_identifiers"))
    enrolments = rs.merge(identifiers, left_on="study_id", right_index=True, how="left")[
        ["patient_id", "study_id", "study_identifiers", "status", "start", "end"]]

    # Last contact: every clinical date on a resource not ignored by its status, mapped to a concept or not.
    contacts = pd.concat([
        cond[["patient_id", "date"]],
        cond[["patient_id", "recorded_date"]].rename(columns={"recorded_date": "date"}),
        meds_counted[["patient_id", "start"]].rename(columns={"start": "date"}),
        meds_not_ignored[["patient_id", "end"]].rename(columns={"end": "date"}),
        proc[["patient_id", "date"]],
        obs_counted[["patient_id", "date"]],
        ae_counted[["patient_id", "date"]],
        rs[["patient_id", "start"]].rename(columns={"start": "date"}),
        rs[["patient_id", "end"]].rename(columns={"end": "date"}),
        patients[["patient_id", "deceased_date"]].rename(columns={"deceased_date": "date"}),
    ], ignore_index=True).dropna().drop_duplicates()

    return StudyFacts(patients=patients, diagnoses=diagnoses.reset_index(drop=True), exposures=exposures.reset_index(drop=True),
                      procedures=procedures.reset_index(drop=True), observations=observations.reset_index(drop=True),
                      adverse_events=adverse_events.reset_index(drop=True), enrolments=enrolments.reset_index(drop=True),
                      contacts=contacts.reset_index(drop=True),
                      quality=pd.DataFrame(quality, columns=["patient_id", "issue"]))
