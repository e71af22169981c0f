"""Which patients can possibly enter either cohort, as FHIR searches, for the cohort-first pull.

Every retrospective cohort member has an ILD diagnosis (study-contract.md §2: IIM *and* ILD), and
every prospective member has a ResearchSubject; so the Conditions with an ILD code plus all
ResearchSubjects name every candidate. The ILD concept is a list of exact codes, which FHIR token
search can express; a prefix rule cannot be searched, so it is refused rather than silently missed.
"""
from __future__ import annotations

from .concepts import ICD10, ConceptMap, ConceptMapError

SEED_CONCEPT = "ild"


def candidate_searches(concepts: ConceptMap) -> list[tuple[str, dict[str, str]]]:
    rules = concepts.domains["conditions"].get(SEED_CONCEPT, ())
    prefixes = [r.prefix for r in rules if r.prefix is not None]
    if prefixes:
        raise ConceptMapError(f"cohort-first mode needs exact codes for conditions.{SEED_CONCEPT}; "
                              f"prefix rules {prefixes} cannot be searched on a FHIR server")
    tokens: list[str] = []
    for rule in rules:
        forms = {rule.code} if rule.system != ICD10 else {rule.code, rule.code.replace(".", "")}  # type: ignore[union-attr]
        tokens.extend(f"{rule.system}|{code}" for code in sorted(forms))
    return [("Condition", {"code": ",".join(tokens)}), ("ResearchSubject", {})]
