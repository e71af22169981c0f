"""Every code list of study-contract.md §1, typed here from the contract (not from the concept map's
YAML), mapped through the default concept map to the concept it must carry."""
from __future__ import annotations

import pytest

from analytics.cohort.concepts import load_concept_map

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
LOCAL = "urn:iim-ild:concept"
SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

CONDITIONS = [
    *[(ICD10, f"M33.1{d}", {"dermatomyositis"} | ({"ild"} if d == 1 else set())) for d in range(10)],
    *[(ICD10, f"M33.2{d}", {"polymyositis"} | ({"ild"} if d == 1 else set())) for d in range(10)],
    *[(ICD10, f"M33.9{d}", {"dermatopolymyositis_unspecified"} | ({"ild"} if d == 1 else set())) for d in range(10)],
    *[(ICD10, f"M33.0{d}", {"juvenile_dm"}) for d in range(10)],
    (LOCAL, "cadm", {"cadm"}), (LOCAL, "antisynthetase-syndrome", {"antisynthetase_syndrome"}),
    *[(ICD10, c, {"ild"}) for c in ("J84.10", "J84.89", "J84.9", "J84.112", "J84.116", "J84.117", "J99")],
    (ICD10, "G72.41", {"inclusion_body_myositis"}), (ICD10, "M35.1", {"overlap_myositis"}),
    (ICD10, "C00.0", {"malignancy"}), (ICD10, "C96.9", {"malignancy"}), (ICD10, "C3490", {"malignancy"}),
    (ICD10, "J84.11", set()), (ICD10, "D48.9", set()), (SNOMED, "C34.90", set()),
]
MEDICATIONS = [
    (RXNORM, "42316", "tacrolimus", None), (RXNORM, "3002", "CTX", None), (RXNORM, "6851", "MTX", None),
    (RXNORM, "1256", "AZA", None), (RXNORM, "68149", "MMF", None), (RXNORM, "3008", "CsA", None),
    (RXNORM, "1592254", "pirfenidone", None), (LOCAL, "ivig", "ivig", None),
    (RXNORM, "8640", "glucocorticoid", 1.0), (RXNORM, "8638", "glucocorticoid", 1.0),
    (RXNORM, "6902", "glucocorticoid", 1.25), (RXNORM, "3264", "glucocorticoid", 6.67),
    (RXNORM, "5492", "glucocorticoid", 0.25),
]
OBSERVATIONS = [
    (LOINC, "2276-4", "ferritin"), (LOINC, "4537-7", "esr"), (LOINC, "30341-2", "esr"), (LOINC, "1988-5", "crp"),
    (LOINC, "2157-6", "creatine_kinase"), (LOINC, "29463-7", "body_weight"), (LOCAL, "anti-mda5", "anti_mda5"),
    (LOCAL, "symptom-exacerbation", "symptom_exacerbation"), (LOCAL, "radiological-progression", "radiological_progression"),
    (LOCAL, "hrct-pattern", "hrct_pattern"), (LOCAL, "hrct-score", "hrct_score"),
    (LOCAL, "ground-glass", "hrct_ground_glass"), (LOCAL, "consolidation", "hrct_consolidation"),
    (LOCAL, "reticular", "hrct_reticular"), (LOCAL, "traction-bronchiectasis", "hrct_traction_bronchiectasis"),
    *[(LOCAL, s, s.replace("-", "_")) for s in ("6mwt", "mmrc", "patient-global-activity", "mmt8", "myoact", "mitax",
                                                "mdi", "cat", "hama", "hamd")],
]
VALUES = [*[(LOCAL, v) for v in ("respiratory", "muscular", "skin", "general", "positive", "negative", "nsip", "uip",
                                 "op", "nsip-op", "aip", "unclassifiable")]]
AE_CATEGORIES = ["infection", "opportunistic-infection", "glucose-metabolism", "electrolyte", "gastrointestinal", "hepatic",
                 "renal", "hematologic", "other"]
UNITS = [("ferritin", 7.0, "ng/mL", 7.0), ("ferritin", 7.0, "ug/L", 7.0), ("ferritin", 7.0, "µg/L", 7.0),
         ("crp", 2.5, "mg/dL", 25.0), ("crp", 25.0, "mg/L", 25.0), ("esr", 30, "mm/h", 30.0),
         ("creatine_kinase", 500, "U/L", 500.0), ("body_weight", 100, "[lb_av]", 45.359237), ("body_weight", 60, "kg", 60.0),
         ("6mwt", 350, "m", 350.0)]


@pytest.mark.parametrize("system, code, expected", CONDITIONS)
def test_condition_codes(system, code, expected):
    assert load_concept_map().concepts_of("conditions", ((system, code),)) == expected
    if system == ICD10:
        assert load_concept_map().concepts_of("conditions", ((system, code.replace(".", "")),)) == expected


@pytest.mark.parametrize("system, code, concept, factor", MEDICATIONS)
def test_medication_codes_and_prednisolone_factors(system, code, concept, factor):
    assert load_concept_map().concepts("medications", system, code) == [(concept, factor)]


def test_plasma_exchange_codes():
    cm = load_concept_map()
    assert cm.concepts_of("procedures", ((SNOMED, "127788007"),)) == {"plasma_exchange"}
    assert cm.concepts_of("procedures", ((LOCAL, "plasma-exchange"),)) == {"plasma_exchange"}


@pytest.mark.parametrize("system, code, concept", OBSERVATIONS)
def test_observation_codes(system, code, concept):
    assert load_concept_map().concepts_of("observations", ((system, code),)) == {concept}


@pytest.mark.parametrize("system, code", VALUES)
def test_coded_observation_values(system, code):
    assert load_concept_map().concepts_of("observation_values", ((system, code),)) == {code}
    assert load_concept_map().concepts_of("observation_values", ((SNOMED, code),)) == frozenset()


@pytest.mark.parametrize("category", AE_CATEGORIES)
def test_adverse_event_categories(category):
    assert load_concept_map().concepts_of("adverse_event_categories", ((LOCAL, category),)) == {category}


def test_seriousness_verification_and_stop_reason_codes():
    cm = load_concept_map()
    assert cm.concepts_of("adverse_event_seriousness", ((SERIOUSNESS, "serious"),)) == {"serious"}
    assert cm.concepts_of("adverse_event_seriousness", ((LOCAL, "serious"),)) == frozenset()
    assert cm.concepts_of("condition_verification", ((VER_STATUS, "refuted"), (VER_STATUS, "entered-in-error"))) == {
        "refuted", "entered-in-error"}
    assert cm.concepts_of("condition_verification", ((VER_STATUS, "confirmed"),)) == frozenset()
    assert cm.concepts_of("medication_status_reasons", ((LOCAL, "adverse-event"),)) == {"adverse-event"}


@pytest.mark.parametrize("concept, value, unit, canonical", UNITS)
def test_unit_conversions(concept, value, unit, canonical):
    assert load_concept_map().to_canonical(concept, value, unit) == pytest.approx(canonical, rel=1e-15)
