"""The cohort tables, derived in one pass over the study facts: both cohorts, their attrition and
data quality, relapse detail, prospective visits, safety events and the pseudonym cross-reference.
Thin: reads the warehouse's raw tables, calls ``analytics.cohort`` and writes the results back."""

import dataclasses
from datetime import datetime, timezone

import dagster as dg

from analytics.cohort.facts import build_facts
from analytics.cohort.tables import derive_cohort_tables
from etl.flatten import FLATTENERS, flatten_all
from etl.pseudonym import pseudonymise

from .automation import STUDY_AUTOMATION, STUDY_FRESHNESS
from .dictionary import DICTIONARY
from .metadata import table_metadata
from .provenance import record_provenance
from .raw import RESOURCE_TYPES, raw_asset_key
from .resources import FhirServerResource, StudyResource, WarehouseResource
from .views import refresh_views

STUDY_GROUP = "study"

_COHORT_TABLES = {
    "cohort": "The retrospective IPTW cohort (study-contract.md §2): one row per patient with group, covariates, "
              "follow-up and event days.",
    "cohort_attrition": "Patients excluded at each step of each cohort's selection (the paper's flowcharts S1 and S3).",
    "cohort_data_quality": "Facts that could not be evaluated, e.g. relapse criterion (iii) without a body weight.",
    "relapse_detail": "Which relapse criteria fired for each patient's first relapse and respiratory relapse.",
    "prospective_cohort": "The prospective cohort (study-contract.md §3): tacrolimus with (combination) or without "
                          "low-dose pirfenidone, with covariates, follow-up and events.",
    "prospective_visits": "Prospective visit values (baseline, months 1, 3, 6, 12): assessment scales, HRCT scores, labs "
                          "and glucocorticoid dose, the observation closest to the nominal day.",
    "safety_events": "Adverse events during follow-up of either cohort: category, seriousness, suspected drug.",
    "drug_discontinuations": "Drugs stopped because of an adverse event during follow-up, for either cohort.",
    "patient_xref": "Pseudonym to FHIR Patient id. Restricted: analysts need not be granted it.",
}


@dg.multi_asset(
    specs=[dg.AssetSpec(name, description=desc, group_name=STUDY_GROUP, kinds={"sql", "pandas"},
                        automation_condition=STUDY_AUTOMATION, freshness_policy=STUDY_FRESHNESS,
                        deps=[raw_asset_key(t) for t in RESOURCE_TYPES]) for name, desc in _COHORT_TABLES.items()],
)
def cohort(context: dg.AssetExecutionContext, warehouse: WarehouseResource, study: StudyResource, fhir: FhirServerResource):
    wh = warehouse.get()
    # Absolute references count as ours only under the configured FHIR server's base URL.
    flat = flatten_all({rtype: wh.raw_resources(rtype) for rtype in FLATTENERS}, base=fhir.base_url or None)
    facts = build_facts(flat, study.concepts())
    extracted = wh.extraction_time() or datetime.now(timezone.utc)
    params = study.retrospective_params(extracted.date())
    derived = derive_cohort_tables(facts, params)
    result, prospective = derived.retrospective, derived.prospective
    context.log.info(f"cohort: {len(result.cohort)} of {len(facts.patients)} patients, prospective cohort: "
                     f"{len(prospective.cohort)}, data cut-off {params.data_cutoff}")
    key = study.pseudonym_key
    tables = {name: pseudonymise(frame, key) if "patient_id" in frame.columns else frame
              for name, frame in derived.tables.items()}
    tables["patient_xref"] = pseudonymise(facts.patients[["patient_id"]].assign(fhir_patient_id=facts.patients["patient_id"]), key)
    primary_keys = {"cohort": ["patient_key"], "patient_xref": ["patient_key"], "cohort_attrition": ["cohort", "step"],
                    "prospective_cohort": ["patient_key"],
                    "prospective_visits": ["patient_key", "measure", "visit_month"]}
    for name, frame in tables.items():
        wh.replace_table(name, frame, primary_keys.get(name))
    record_provenance(wh, context.run.run_id, study, tables,
                      {"table_set": "cohort", "contract_parameters": dataclasses.asdict(params)})
    refresh_views(wh, set(tables) | {"provenance"})
    groups = result.cohort["group"].value_counts().to_dict()
    prospective_groups = prospective.cohort["group"].value_counts().to_dict()
    for name, frame in tables.items():
        meta = table_metadata(frame, preview=name != "patient_xref", descriptions=DICTIONARY.get(name))
        if name == "cohort":
            meta.update({"n_tacrolimus": int(groups.get("tacrolimus", 0)), "n_conventional": int(groups.get("conventional", 0)),
                         "data_cutoff": params.data_cutoff.isoformat(), "concept_map_sha256": study.concepts().digest})
        if name == "prospective_cohort":
            meta.update({"n_combination": int(prospective_groups.get("combination", 0)),
                         "n_tacrolimus": int(prospective_groups.get("tacrolimus", 0))})
        if name == "cohort_attrition":
            meta["attrition"] = dg.MetadataValue.md(frame.to_markdown(index=False))
        yield dg.MaterializeResult(asset_key=name, metadata=meta)
