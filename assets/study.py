"""The study tables: cohort (with attrition, data quality and the pseudonym cross-reference),
IPTW weights and effect estimates. Thin: each asset reads the warehouse, calls ``analytics``
and writes the result back."""

from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from analytics.cohort.facts import build_facts
from analytics.cohort.prospective import ProspectiveParams, derive_prospective
from analytics.cohort.retrospective import derive_retrospective
from analytics.cohort.safety import drug_discontinuations, safety_events
from analytics.propensity import fit_propensity, iptw_weights
from analytics.weighted_cox import weighted_cox
from etl.flatten import FLATTENERS, flatten_all
from etl.pseudonym import pseudonymise

from .dictionary import DICTIONARY
from .metadata import table_metadata
from .raw import RESOURCE_TYPES, raw_asset_key
from .resources import StudyResource, WarehouseResource

STUDY_GROUP = "study"
OUTCOMES = ("death", "relapse", "resp_relapse")
PRIMARY = "primary"
PRIMARY_COMPARISON = "tacrolimus_vs_conventional"

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
                        deps=[raw_asset_key(t) for t in RESOURCE_TYPES]) for name, desc in _COHORT_TABLES.items()],
)
def cohort(context: dg.AssetExecutionContext, warehouse: WarehouseResource, study: StudyResource):
    wh = warehouse.get()
    flat = flatten_all({rtype: wh.raw_resources(rtype) for rtype in FLATTENERS})
    facts = build_facts(flat, study.concepts())
    extracted = wh.extraction_time() or datetime.now(timezone.utc)
    params = study.retrospective_params(extracted.date())
    result = derive_retrospective(facts, params)
    prospective = derive_prospective(facts, ProspectiveParams(rules=params))
    context.log.info(f"cohort: {len(result.cohort)} of {len(facts.patients)} patients, prospective cohort: "
                     f"{len(prospective.cohort)}, data cut-off {params.data_cutoff}")
    key = study.pseudonym_key
    safety = pd.concat([safety_events(facts, result.cohort, "retrospective"),
                        safety_events(facts, prospective.cohort, "prospective")], ignore_index=True)
    stopped = pd.concat([drug_discontinuations(facts, result.cohort, "retrospective"),
                         drug_discontinuations(facts, prospective.cohort, "prospective")], ignore_index=True)

    tables = {
        "cohort": pseudonymise(result.cohort, key),
        "cohort_attrition": pd.concat([result.attrition, prospective.attrition], ignore_index=True),
        "cohort_data_quality": pd.concat([result.data_quality, prospective.data_quality], ignore_index=True),
        "relapse_detail": pseudonymise(result.relapse_detail, key),
        "patient_xref": pseudonymise(facts.patients[["patient_id"]].assign(fhir_patient_id=facts.patients["patient_id"]), key),
        "prospective_cohort": pseudonymise(prospective.cohort, key),
        "prospective_visits": pseudonymise(prospective.visits, key),
        "safety_events": pseudonymise(safety, key),
        "drug_discontinuations": pseudonymise(stopped, key),
    }
    primary_keys = {"cohort": ["patient_key"], "patient_xref": ["patient_key"], "cohort_attrition": ["cohort", "step"],
                    "prospective_cohort": ["patient_key"],
                    "prospective_visits": ["patient_key", "measure", "visit_month"]}
    for name, frame in tables.items():
        wh.replace_table(name, frame, primary_keys.get(name))
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


@dg.asset(name="iptw_weights", group_name=STUDY_GROUP, kinds={"sql", "statsmodels"}, deps=["cohort"])
def iptw_weights_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Propensity scores (logistic regression on age, sex, diagnosis subset, initial prednisolone-equivalent
    dose, plasma exchange and IVIg) and the paper's ATE weights, 1/ps for tacrolimus and 1/(1−ps) for the
    conventional group, with stabilized weights beside them."""
    wh = warehouse.get()
    frame = wh.read_table("cohort")
    treated = frame["group"].eq("tacrolimus")
    fit = fit_propensity(frame, treated)
    weights = iptw_weights(treated, fit.scores)
    table = pd.concat([frame[["patient_key"]], weights], axis=1).assign(analysis=PRIMARY)[
        ["patient_key", "analysis", "propensity_score", "weight", "stabilized_weight"]]
    wh.replace_table("iptw_weights", table, ["patient_key", "analysis"])
    context.log.info(f"propensity model coefficients: {fit.coefficients.round(4).to_dict()}")
    summary = table.groupby(frame["group"])["weight"].describe()[["count", "mean", "min", "max"]]
    return dg.MaterializeResult(metadata={
        **table_metadata(table, preview=True, descriptions=DICTIONARY["iptw_weights"]),
        "propensity_coefficients": dg.MetadataValue.md(fit.coefficients.to_frame("coef").to_markdown(floatfmt=".4f")),
        "weights_by_group": dg.MetadataValue.md(summary.to_markdown(floatfmt=".3f")),
    })


def primary_effect_estimates(frame: pd.DataFrame) -> pd.DataFrame:
    """IPTW Cox for each outcome, tacrolimus vs conventional, from cohort rows joined to their weights."""
    treated = frame["group"].eq("tacrolimus")
    rows = []
    for outcome in OUTCOMES:
        est = weighted_cox(frame[f"{outcome}_days"], frame[f"{outcome}_event"], treated, frame["weight"])
        rows.append({"analysis": PRIMARY, "comparison": PRIMARY_COMPARISON, "outcome": outcome,
                     "hazard_ratio": est.hazard_ratio, "ci_lower": est.ci_lower, "ci_upper": est.ci_upper,
                     "p_value": est.p_value, "logrank_p": None, "n_treated": est.n_treated, "n_control": est.n_control,
                     "events_treated": est.events_treated, "events_control": est.events_control})
    return pd.DataFrame(rows, columns=list(DICTIONARY["effect_estimates"]))


@dg.asset(group_name=STUDY_GROUP, kinds={"sql", "lifelines"}, deps=["cohort", "iptw_weights"])
def effect_estimates(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """IPTW-weighted Cox hazard ratios with robust 95% CIs and Wald p, tacrolimus vs conventional, for death,
    relapse and respiratory relapse (the paper's primary analysis)."""
    wh = warehouse.get()
    weights = wh.read_table("iptw_weights")
    frame = wh.read_table("cohort").merge(weights[weights["analysis"] == PRIMARY], on="patient_key", how="inner")
    table = primary_effect_estimates(frame)
    wh.replace_table("effect_estimates", table, ["analysis", "comparison", "outcome"])
    return dg.MaterializeResult(metadata={
        **table_metadata(table, preview=True, descriptions=DICTIONARY["effect_estimates"]),
    })
