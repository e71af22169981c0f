"""What sites must share to be pooled, and one digest of it.

The digest covers the contract's rule parameters (windows, thresholds; not the data cut-off, which is each
site's extraction date), the contract's default concept map, and the analysis (comparisons, outcomes,
propensity covariates and reference levels, weights, ties). A hospital's own additions to the concept map
are local codings of the same concepts: they do not change the contract, so the package reports the
effective map's digest beside the contract's, and the coordinator shows which sites extend the default.
"""
from __future__ import annotations

import dataclasses
import hashlib
from datetime import date
from typing import Any

from analytics.cohort.concepts import ConceptMap, load_concept_map
from analytics.cohort.params import RuleParams
from analytics.cohort.prospective import ProspectiveParams
from analytics.comparisons import OUTCOMES, RETROSPECTIVE_COMPARISONS
from analytics.propensity import PS_COVARIATES, REFERENCE_LEVELS

from .canonical import canonical_bytes

CONTRACT_FORMAT = 1
ANALYSIS = {
    "comparisons": dict(RETROSPECTIVE_COMPARISONS),
    "outcomes": list(OUTCOMES),
    "propensity_covariates": list(PS_COVARIATES),
    "reference_levels": dict(REFERENCE_LEVELS),
    "weights": "ATE: 1/ps treated, 1/(1-ps) comparator; each site fits its own propensity model per comparison",
    "cox": "Efron ties, case weights, robust (sandwich) variance",
}


def _plain(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def contract_terms(params: RuleParams | None = None, prospective: ProspectiveParams | None = None) -> dict[str, Any]:
    params = params or RuleParams()
    prospective = prospective or ProspectiveParams(rules=params)
    rules = {k: _plain(v) for k, v in dataclasses.asdict(params).items() if k != "data_cutoff"}
    prosp = {f.name: _plain(getattr(prospective, f.name)) for f in dataclasses.fields(prospective) if f.name != "rules"}
    return {"contract_format": CONTRACT_FORMAT, "retrospective_rules": rules, "prospective_rules": prosp,
            "concept_map_sha256": load_concept_map(None).digest, "analysis": ANALYSIS}


def contract_digest(terms: dict[str, Any] | None = None) -> str:
    return hashlib.sha256(canonical_bytes(terms if terms is not None else contract_terms())).hexdigest()


def concept_map_report(concepts: ConceptMap) -> dict[str, Any]:
    """The site's effective concept map: its digest and whether it differs from the contract's default."""
    return {"effective_sha256": concepts.digest, "extends_default": concepts.digest != load_concept_map(None).digest}
