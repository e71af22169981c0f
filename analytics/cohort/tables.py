"""Every cohort table of one run, derived from the study facts in one place.

The Dagster asset writes these (after pseudonymisation) and the invariance suite compares them
across meaning-preserving rewrites of a hospital, so both must call the same function. Patients
are still FHIR ids here; ``patient_xref`` is added where the tables are written.

The facts may come whole (``derive_cohort_tables``) or in chunks of patients (``CohortBuilder``,
which the asset uses so that memory grows with the chunk, not the hospital). Every rule is a
per-patient rule, so the chunks' outcomes are simply gathered; the one-pass function is the
builder with a single chunk, and the tables are equal row for row either way (tests/assets).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .facts import StudyFacts
from .params import RuleParams
from .patient import group_facts
from .prospective import ProspectiveParams, ProspectivePart, ProspectiveResult, assemble_prospective, prospective_part
from .retrospective import (
    RetrospectivePart,
    RetrospectiveResult,
    assemble_retrospective,
    retrospective_part,
    without_iim_or_ild_codes,
)
from .safety import (
    DISCONTINUATION_COLUMNS,
    EVENT_COLUMNS,
    drug_discontinuations,
    safety_events,
    sort_discontinuations,
    sort_events,
)

# The derived tables, in the order the asset writes them (patient_xref is the asset's own).
COHORT_TABLES = ("cohort", "cohort_attrition", "cohort_data_quality", "relapse_detail", "prospective_cohort",
                 "prospective_visits", "safety_events", "drug_discontinuations")
COHORTS = ("retrospective", "prospective")


@dataclass(frozen=True)
class CohortTables:
    retrospective: RetrospectiveResult
    prospective: ProspectiveResult
    tables: dict[str, pd.DataFrame]  # COHORT_TABLES, keyed by FHIR patient id


@dataclass
class ChunkOutcome:
    """What one chunk of patients contributes to the tables: small (rows of the cohort, not facts), so that
    chunks can be derived in worker processes and gathered in order."""

    retrospective: RetrospectivePart
    prospective: ProspectivePart | None = None
    events: dict[str, pd.DataFrame] = field(default_factory=dict)
    stops: dict[str, pd.DataFrame] = field(default_factory=dict)


def chunk_outcome(facts: StudyFacts, params: RuleParams) -> ChunkOutcome:
    """Every rule for the patients of ``facts`` (all of a patient's facts must be in it)."""
    grouped = group_facts(facts)
    retro = retrospective_part(facts, params, grouped)
    pro = prospective_part(facts, ProspectiveParams(rules=params), grouped)
    outcome = ChunkOutcome(retro, pro)
    for name, part in zip(COHORTS, (retro, pro), strict=True):
        cohort = part.cohort()
        outcome.events[name] = safety_events(facts, cohort, name)
        outcome.stops[name] = drug_discontinuations(facts, cohort, name)
    return outcome


def non_candidate_outcome(facts: StudyFacts) -> ChunkOutcome:
    """Patients known to have no IIM-coded Condition (``retrospective.without_iim_or_ild_codes``)."""
    return ChunkOutcome(without_iim_or_ild_codes(facts))


@dataclass
class CohortBuilder:
    """Gathers the cohort tables chunk by chunk of patients, holding only each chunk's outcomes.

    Chunks are added in hospital order (the Patient table's order); a patient's facts must all be in
    one chunk; an outcome of ``non_candidate_outcome`` stands for patients known to have no IIM-coded Condition,
    whose facts need only carry what data quality reads. Absent patients (referenced but not in the Patient table) and
    resources without a patient are the caller's to report in ``build(more_quality)``."""

    params: RuleParams
    outcomes: list[ChunkOutcome] = field(default_factory=list)

    def add(self, facts: StudyFacts) -> None:
        self.outcomes.append(chunk_outcome(facts, self.params))

    def build(self, more_quality: dict[str, set[str]] | None = None) -> CohortTables:
        result = assemble_retrospective([o.retrospective for o in self.outcomes], more_quality)
        prospective = assemble_prospective([o.prospective for o in self.outcomes if o.prospective is not None])
        tables = {
            "cohort": result.cohort,
            "cohort_attrition": pd.concat([result.attrition, prospective.attrition], ignore_index=True),
            "cohort_data_quality": pd.concat([result.data_quality, prospective.data_quality], ignore_index=True),
            "relapse_detail": result.relapse_detail,
            "prospective_cohort": prospective.cohort,
            "prospective_visits": prospective.visits,
            "safety_events": pd.concat([sort_events(_gather([o.events[c] for o in self.outcomes if c in o.events], EVENT_COLUMNS))
                                        for c in COHORTS], ignore_index=True),
            "drug_discontinuations": pd.concat([sort_discontinuations(_gather([o.stops[c] for o in self.outcomes if c in o.stops],
                                                                              DISCONTINUATION_COLUMNS))
                                                for c in COHORTS], ignore_index=True),
        }
        return CohortTables(result, prospective, tables)


def _gather(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The chunks' rows in one frame. Empty chunks are left out: pandas would let their untyped columns turn
    an int column into object, and the table would then depend on how the hospital was chunked."""
    rows = [f for f in frames if len(f)]
    if not rows:
        return frames[0] if frames else pd.DataFrame(columns=columns)
    return rows[0] if len(rows) == 1 else pd.concat(rows, ignore_index=True)


def derive_cohort_tables(facts: StudyFacts, params: RuleParams) -> CohortTables:
    """Every cohort table from the whole hospital's facts at once: the builder with one chunk."""
    builder = CohortBuilder(params)
    builder.add(facts)
    return builder.build()
