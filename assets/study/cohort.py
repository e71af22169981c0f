"""The cohort tables: both cohorts, their attrition and data quality, relapse detail, prospective visits,
safety events and the pseudonym cross-reference. Thin: ``cohort_source`` reads the warehouse's raw tables in
chunks of patients and calls ``analytics.cohort``; this publishes the results."""

import dataclasses
from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from analytics.cohort.prospective import ProspectiveParams
from analytics.pseudonym import pseudonymise
from etl.fhir.types import RESOURCE_TYPES

from ..fhir.ingest import raw_asset_key
from ..resources import FhirServerResource, StudyResource, WarehouseResource
from .checks import asset_check_specs, table_check_results
from .cohort_source import derive_in_chunks
from .publish import asset_specs, table_result, write_tables


@dg.multi_asset(specs=asset_specs("cohort", kinds={"sql", "pandas"}, deps=[raw_asset_key(t) for t in RESOURCE_TYPES]),
                check_specs=asset_check_specs("cohort"))
def cohort(context: dg.AssetExecutionContext, warehouse: WarehouseResource, study: StudyResource, fhir: FhirServerResource):
    wh = warehouse.get()
    extracted = wh.extraction_time() or datetime.now(timezone.utc)
    params = study.retrospective_params(extracted.date())
    # Absolute references count as ours only under the configured FHIR server's base URL.
    timings: dict[str, float] = {}
    derived, patient_ids = derive_in_chunks(wh, study.concepts(), params, base=fhir.base_url or None, timings=timings)
    context.log.info("cohort step: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))  # counts and seconds only
    result, prospective = derived.retrospective, derived.prospective
    context.log.info(f"cohort: {len(result.cohort)} of {len(patient_ids)} patients, prospective cohort: "
                     f"{len(prospective.cohort)}, data cut-off {params.data_cutoff}")
    key = study.pseudonym_key
    tables = {name: pseudonymise(frame, key) if "patient_id" in frame.columns else frame
              for name, frame in derived.tables.items()}
    tables["patient_xref"] = pseudonymise(pd.DataFrame({"patient_id": patient_ids, "fhir_patient_id": patient_ids}), key)
    write_tables(wh, context.run.run_id, study, tables,
                 {"table_set": "cohort", "contract_parameters": dataclasses.asdict(params),
                  "prospective_parameters": dataclasses.asdict(ProspectiveParams(rules=params))})
    groups = result.cohort["group"].value_counts().to_dict()
    prospective_groups = prospective.cohort["group"].value_counts().to_dict()
    extra: dict[str, dict] = {
        "cohort": {"n_tacrolimus": int(groups.get("tacrolimus", 0)), "n_conventional": int(groups.get("conventional", 0)),
                   "data_cutoff": params.data_cutoff.isoformat(), "concept_map_sha256": study.concepts().digest},
        "prospective_cohort": {"n_combination": int(prospective_groups.get("combination", 0)),
                               "n_tacrolimus": int(prospective_groups.get("tacrolimus", 0))},
        "cohort_attrition": {"attrition": dg.MetadataValue.md(tables["cohort_attrition"].to_markdown(index=False))},
    }
    for name, frame in tables.items():
        yield table_result(name, frame, preview=name != "patient_xref", extra=extra.get(name))
    yield from table_check_results(context, wh, study)
