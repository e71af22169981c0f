"""Every cohort table of one run, derived from the study facts in one place.

The Dagster asset writes these (after pseudonymisation) and the invariance suite compares them
across meaning-preserving rewrites of a hospital, so both must call the same function. Patients
are still FHIR ids here; ``patient_xref`` is added where the tables are written.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .facts import StudyFacts
from .params import RuleParams
from .prospective import ProspectiveParams, ProspectiveResult, derive_prospective
from .retrospective import RetrospectiveResult, derive_retrospective
from .safety import drug_discontinuations, safety_events

# The derived tables, in the order the asset writes them (patient_xref is the asset's own).
COHORT_TABLES = ("cohort", "cohort_attrition", "cohort_data_quality", "relapse_detail", "prospective_cohort",
                 "prospective_visits", "safety_events", "drug_discontinuations")


@dataclass(frozen=True)
class CohortTables:
    retrospective: RetrospectiveResult
    prospective: ProspectiveResult
    tables: dict[str, pd.DataFrame]  # COHORT_TABLES, keyed by FHIR patient id


def derive_cohort_tables(facts: StudyFacts, params: RuleParams) -> CohortTables:
    result = derive_retrospective(facts, params)
    prospective = derive_prospective(facts, ProspectiveParams(rules=params))
    tables = {
        "cohort": result.cohort,
        "cohort_attrition": pd.concat([result.attrition, prospective.attrition], ignore_index=True),
        "cohort_data_quality": pd.concat([result.data_quality, prospective.data_quality], ignore_index=True),
        "relapse_detail": result.relapse_detail,
        "prospective_cohort": prospective.cohort,
        "prospective_visits": prospective.visits,
        "safety_events": pd.concat([safety_events(facts, result.cohort, "retrospective"),
                                    safety_events(facts, prospective.cohort, "prospective")], ignore_index=True),
        "drug_discontinuations": pd.concat([drug_discontinuations(facts, result.cohort, "retrospective"),
                                            drug_discontinuations(facts, prospective.cohort, "prospective")],
                                           ignore_index=True),
    }
    return CohortTables(result, prospective, tables)
