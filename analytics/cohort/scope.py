"""Which patients can possibly enter either cohort: as FHIR searches, for the cohort-first pull, and
as a test on a Condition's codings, for the cohort step's reading of the warehouse in chunks.

Every retrospective cohort member has an ILD diagnosis (study-contract.md §2: IIM *and* ILD), and
every prospective member has a ResearchSubject; so the Conditions with an ILD code plus all
ResearchSubjects name every candidate. The ILD concept is a list of exact codes, which FHIR token
search can express; a prefix rule cannot be searched, so it is refused rather than silently missed.
"""
from __future__ import annotations

from .concepts import ICD10, Codings, ConceptMap, ConceptMapError
from .retrospective import IIM_CONCEPTS

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


def carries_iim(concepts: ConceptMap, codings: Codings) -> bool:
    """Whether a Condition's codings carry an IIM concept, whatever its status or date. A patient with no such
    Condition fails the retrospective cohort's first rule (``no_iim_condition``) whatever else the record holds,
    and only a ResearchSubject can bring them into the prospective cohort: the rules need not read them."""
    return bool(concepts.concepts_of("conditions", codings) & set(IIM_CONCEPTS))
