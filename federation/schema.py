"""JSON Schemas of what travels between sites and the coordinator (draft 2020-12, checked with
``jsonschema``). Closed objects (no additional properties): a package can carry only the fields named here,
which is half of the proof that it holds aggregates only (the leak test is the other half). No free text
either: names are drawn from the contract's enumerations (comparisons, outcomes, covariates, attrition
reasons, the cells suppression may withhold), notes from a closed list, versions and times from patterns, so
no field can carry a date or an id. What a schema cannot say (a count under the threshold, an ESS above its
arm's size, the consortium's data cut-off) federation/verify.py checks after it.

Versioning: a reader accepts only its own SCHEMA_VERSION. The major number changes whenever a document valid
under one version can be invalid under the other (a field closed, removed or made stricter), the minor number
for additions every reader of the same major accepts. 2.0 (issue 18): closed text fields, nullable SMDs. 2.1: a
pooled result names the sites left out (and why) and the sites each fit pooled. 3.0 (review of issue 18): a
reply's refusals are reason codes (REFUSALS) with at most a limit from the site's own policy, never text;
a package lists its withheld cells without saying which were small; a pooled fit names the sites it left out
and carries R's warning (out of rounds, a possibly infinite coefficient).
"""
from __future__ import annotations

from typing import Any

from analytics.cohort.prospective import ATTRITION_REASONS as PROSPECTIVE_REASONS
from analytics.cohort.retrospective import ATTRITION_REASONS as RETROSPECTIVE_REASONS
from analytics.comparisons import OUTCOMES, RETROSPECTIVE_COMPARISONS
from analytics.propensity import PS_COVARIATES, REFERENCE_LEVELS

SCHEMA_VERSION = "3.0"
SITE_ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
COUNT = {"type": ["integer", "null"], "minimum": 0}            # null: withheld by small-cell suppression
NUMBER = {"type": ["number", "null"]}
NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,80}$"}
ATTRITION_REASONS = {"retrospective": RETROSPECTIVE_REASONS, "prospective": PROSPECTIVE_REASONS}
_CELLS = ["cohort.n", "cohort.groups.tacrolimus", "cohort.groups.conventional",
          *(f"attrition.{c}.{k}" for c, reasons in ATTRITION_REASONS.items()
            for k in ("screened", "included", *(f"excluded.{r}" for r in reasons))),
          *(f"comparisons.{n}.{k}" for n in RETROSPECTIVE_COMPARISONS for k in ("n_treated", "n_control")),
          *(f"comparisons.{n}.outcomes.{o}.events_{arm}" for n in RETROSPECTIVE_COMPARISONS for o in OUTCOMES
            for arm in ("treated", "control"))]
WITHHOLDABLE = tuple(_CELLS)   # every count a package may publish, by its name in suppression.withheld
_LEVEL = "[A-Za-z]{1,20}"      # a category level (sex, diagnosis subset): letters only, short
COVARIATE = {"type": "string", "pattern": "^(" + "|".join(
    f"{c}\\[{_LEVEL}\\]" if c in REFERENCE_LEVELS else c for c in PS_COVARIATES) + ")$"}
SMD_BOUND = 10.0   # |SMD| beyond this is no balance worth reporting (no overlap); the site withholds it
# Why an estimate or a comparison is withheld: a closed list, so no free text (a date, an id) can ride along.
NOTES = {
    "small_arm": "an arm has fewer patients than the suppression threshold: estimates and balance withheld",
    "no_weights": "no weights: the site's propensity model could not be fitted for this comparison",
    "weights_incomplete": "weights do not cover the comparison's patients: estimates withheld",
    "no_events": "no events in an arm: the hazard ratio is not estimable",
    "events_withheld": "an event count is withheld by small-cell suppression: the estimate is withheld with it",
    "cox_failed": "the site's Cox model did not converge",
}


# Why a site does not answer a request (or one fit of it): codes only. A free-text reason could carry anything
# (an exception's message names values from the site's data); the text stays in the site's own run log.
REFUSALS = {
    "other_contract": "the site works under another contract",
    "too_few_sites": "the request names fewer sites than a pooled fit needs",
    "unknown_site": "the request names a site outside the consortium's key list",
    "round_cap": "the site's cap on rounds per session is reached (limit: the cap)",
    "evaluation_cap": "the site's cap on fit evaluations per session is reached (limit: the cap)",
    "session_cap": "the site's cap on sessions per window is reached (limit: the cap)",
    "declined": "the site's data engineer declined the request",
    "withheld": "the site's package withholds its own estimate of this fit (a small arm or a withheld event count); "
                "Newton terms would approximate it",
    "small_arm": "an arm of this fit has fewer patients than the site's minimum (limit: the minimum)",
    "no_weights": "the site has no weights for this comparison (its propensity model could not be fitted)",
    "not_finite": "the site's likelihood is not finite at the requested beta",
    "bad_request": "the site cannot evaluate this item (e.g. not one coefficient)",
    "site_data_error": "the site's tables do not fit together; the detail is in the site's own run log",
}
REQUEST_REFUSALS = ("other_contract", "too_few_sites", "unknown_site", "round_cap", "evaluation_cap", "session_cap", "declined")
FIT_REFUSALS = ("withheld", "small_arm", "no_weights", "not_finite", "bad_request", "site_data_error")


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            "additionalProperties": False}


_ESTIMATE = _obj({"log_hr": {"type": "number"}, "robust_se": {"type": "number", "exclusiveMinimum": 0}})
NOTE = {"enum": [*NOTES.values(), None]}
_OUTCOME = _obj({"events_treated": COUNT, "events_control": COUNT, "estimate": {"oneOf": [_ESTIMATE, {"type": "null"}]},
                 "note": NOTE})
SMD = {"type": ["number", "null"], "minimum": -SMD_BOUND, "maximum": SMD_BOUND}  # null: rests on a small cell
ESS = {"type": ["number", "null"], "exclusiveMinimum": 0}   # and at most the arm's size (verify.py)
_BALANCE = _obj({"covariate": COVARIATE,
                 "smd_unweighted": SMD, "smd_weighted": SMD})
_COMPARISON = _obj({
    "n_treated": COUNT, "n_control": COUNT, "ess_treated": ESS, "ess_control": ESS,
    "balance": {"oneOf": [{"type": "array", "items": _BALANCE, "maxItems": 50}, {"type": "null"}]},
    "outcomes": {"type": "object", "propertyNames": {"enum": list(OUTCOMES)}, "additionalProperties": _OUTCOME},
    "note": NOTE})


def _attrition(reasons: tuple[str, ...]) -> dict[str, Any]:
    return _obj({"screened": COUNT, "included": COUNT,
                 "excluded": {"type": "object", "propertyNames": {"enum": list(reasons)}, "additionalProperties": COUNT}})

SITE_PACKAGE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "IIM-ILD site aggregates",
    **_obj({
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"const": "site_aggregates"},
        "site_id": SITE_ID,
        "created_at": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(Z|[+-]\\d{2}:\\d{2})$"},
        "contract": _obj({"digest": SHA256, "terms": {"type": "object"},
                          "concept_map": _obj({"effective_sha256": SHA256, "extends_default": {"type": "boolean"}}),
                          "data_cutoff": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$"}}),
        "software": _obj({"package_version": {"type": "string", "pattern": "^(unknown|\\d{1,4}(\\.\\d{1,6}){0,3}"
                                                                         "((a|b|rc|\\.post|\\.dev)\\d{1,6})*(\\+[0-9a-f.]{1,40})?)$"},
                          "git_commit": {"type": "string", "pattern": "^(unknown|[0-9a-f]{7,40})$"}}),
        "suppression": _obj({"threshold": {"type": "integer", "minimum": 1},
                             "withheld": {"type": "array", "items": {"enum": list(WITHHOLDABLE)}, "uniqueItems": True}}),
        "cohort": _obj({"n": COUNT, "groups": _obj({"tacrolimus": COUNT, "conventional": COUNT})}),
        "attrition": _obj({c: _attrition(r) for c, r in ATTRITION_REASONS.items()}, required=[]),
        "comparisons": {"type": "object", "propertyNames": {"enum": list(RETROSPECTIVE_COMPARISONS)},
                        "additionalProperties": _COMPARISON},
    }),
}

_BETA = {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 10}
_MATRIX = {"type": "array", "items": _BETA, "minItems": 1, "maxItems": 10}
_ITEM = _obj({"fit_id": NAME, "comparison": NAME, "outcome": NAME, "ask": {"enum": ["terms", "meat"]}, "beta": _BETA})
ROUND_REQUEST = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "IIM-ILD pooling round request",
    **_obj({
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"const": "round_request"},
        "session_id": NAME,
        "round": {"type": "integer", "minimum": 1},
        "contract_digest": SHA256,
        "sites": {"type": "array", "items": SITE_ID, "minItems": 1, "uniqueItems": True},
        "reveals": {"type": "string", "maxLength": 2000},
        "items": {"type": "array", "items": _ITEM, "minItems": 1, "maxItems": 50},
    }),
}
_TERMS = _obj({"loglik": {"type": "number"}, "score": _BETA, "information": _MATRIX})


def _refusal(codes: tuple[str, ...]) -> dict[str, Any]:
    return {"oneOf": [{"type": "null"}, _obj({"code": {"enum": list(codes)},
                                              "limit": {"type": ["integer", "null"], "minimum": 0}})]}


_ANSWER = _obj({"fit_id": NAME, "ask": {"enum": ["terms", "meat"]}, "terms": {"oneOf": [_TERMS, {"type": "null"}]},
                "meat": {"oneOf": [_MATRIX, {"type": "null"}]}, "refused": _refusal(FIT_REFUSALS)})
ROUND_REPLY = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "IIM-ILD pooling round reply",
    **_obj({
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"const": "round_reply"},
        "session_id": NAME,
        "round": {"type": "integer", "minimum": 1},
        "site_id": SITE_ID,
        "contract_digest": SHA256,
        "request_sha256": SHA256,
        "refused": _refusal(REQUEST_REFUSALS),
        "answers": {"type": "array", "items": _ANSWER, "maxItems": 50},
    }),
}
_POOLED = _obj({"coef": {"type": "number"}, "robust_se": {"type": "number"}, "hazard_ratio": {"type": "number"},
                "ci_lower": {"type": "number"}, "ci_upper": {"type": "number"}, "p_value": {"type": "number"},
                "se": {"type": "number"}, "loglik": {"type": "number"}, "iterations": {"type": "integer"},
                "n_sites": {"type": "integer"},
                # R's warnings: out of Newton rounds ("did not converge"), or a coefficient that may be infinite
                "warning": {"enum": [None, "max_iter", "possibly_infinite"]}})
POOLED_RESULT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "IIM-ILD pooled stratified Cox result",
    **_obj({
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"const": "pooled_result"},
        "session_id": NAME,
        "contract_digest": SHA256,
        "sites": {"type": "array", "items": SITE_ID},                  # the sites asked to the end (may be none)
        "left_out": {"type": "object", "propertyNames": SITE_ID, "additionalProperties": {"type": "string", "maxLength": 1000}},
        "rounds": {"type": "integer", "minimum": 0},                    # 0: too few sites, no request was written
        "fits": {"type": "object", "propertyNames": NAME, "additionalProperties": _obj({
            "comparison": NAME, "outcome": NAME, "result": {"oneOf": [_POOLED, {"type": "null"}]},
            "reason": {"type": ["string", "null"], "maxLength": 1000}, "sites": {"type": "array", "items": SITE_ID},
            "left_out": {"type": "object", "propertyNames": SITE_ID, "additionalProperties": {"enum": list(FIT_REFUSALS)}}})},
    }),
}
SCHEMAS = {"site_aggregates": SITE_PACKAGE, "round_request": ROUND_REQUEST, "round_reply": ROUND_REPLY,
           "pooled_result": POOLED_RESULT}
