"""The concept map (analytics.cohort.concepts) and the dose arithmetic of analytics.cohort.facts."""
from __future__ import annotations

import pytest

from analytics.cohort.concepts import ConceptMapError, load_concept_map
from analytics.cohort.facts import daily_dose_mg

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"


def names(system, code):
    return {name for name, _ in load_concept_map().concepts("conditions", system, code)}


def test_icd10_matches_with_and_without_the_dot():
    assert names(ICD10, "M33.10") == names(ICD10, "M3310") == {"dermatomyositis"}


def test_myositis_with_respiratory_involvement_is_both_iim_and_ild():
    assert names(ICD10, "M33.11") == {"dermatomyositis", "ild"}


def test_prefixes_and_non_matches():
    assert names(ICD10, "C50.911") == {"malignancy"}
    assert names(ICD10, "M33.03") == {"juvenile_dm"}
    assert names("http://snomed.info/sct", "M33.10") == set()  # the system matters
    assert names(ICD10, "J84.1") == set()  # parent of J84.10 is not in the list


def test_glucocorticoid_factors():
    cm = load_concept_map()
    rx = "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert cm.concepts("medications", rx, "6902") == [("glucocorticoid", 1.25)]
    assert cm.to_canonical("crp", 2.5, "mg/dL") == 25.0
    assert cm.to_canonical("body_weight", 100, "[lb_av]") == pytest.approx(45.359237)
    assert cm.to_canonical("ferritin", 10, "furlongs") is None


@pytest.mark.parametrize("args, mg", [((0.5, "g", 1, 1, "d"), 500.0), ((10, "mg", None, None, None), 10.0),
                                      ((5, "mg", 2, 1, "d"), 10.0), ((15, "mg", 1, 1, "wk"), 15 / 7),
                                      ((5, "tablet", 1, 1, "d"), None)])
def test_daily_dose(args, mg):
    assert daily_dose_mg(*args) == (pytest.approx(mg) if mg is not None else None)


def test_a_malformed_map_names_the_file_line_and_entry(tmp_path):
    bad = tmp_path / "map.yaml"
    bad.write_text("systems: {ICD10: http://hl7.org/fhir/sid/icd-10-cm}\nconditions:\n  ild:\n    - {system: ICD10}\n")
    with pytest.raises(ConceptMapError, match=rf"{bad}:4: conditions\.ild\[0\] needs a system and exactly one of code or prefix"):
        load_concept_map(str(bad))


def test_an_unknown_system_name_is_refused(tmp_path):
    bad = tmp_path / "map.yaml"
    bad.write_text("medications:\n  tacrolimus:\n    - {system: RXNROM, code: '42316'}\n")
    with pytest.raises(ConceptMapError, match=rf"{bad}:3: medications\.tacrolimus\[0\]: system 'RXNROM'"):
        load_concept_map(str(bad))


def test_a_hospital_adds_its_own_codes_to_the_defaults(tmp_path):
    default = load_concept_map()
    extra = tmp_path / "map.yaml"
    extra.write_text("conditions:\n  ild: [{system: 'urn:hospital:dx', code: ILD-7}]\n"
                     "units:\n  crp: {canonical: mg/L, convert: {nmol/L: 0.105}}\n")
    cm = load_concept_map(str(extra))
    assert {n for n, _ in cm.concepts("conditions", "urn:hospital:dx", "ILD-7")} == {"ild"}
    assert {n for n, _ in cm.concepts("conditions", ICD10, "J84.10")} == {"ild"}  # the defaults stay
    assert cm.to_canonical("crp", 10, "nmol/L") == pytest.approx(1.05) and cm.to_canonical("crp", 1, "mg/dL") == 10
    assert cm.digest != default.digest


def test_a_hospital_file_may_use_the_default_system_names(tmp_path):
    extra = tmp_path / "map.yaml"
    extra.write_text("conditions:\n  ild: [{system: ICD10, code: J84.2}]\n")
    assert {n for n, _ in load_concept_map(str(extra)).concepts("conditions", ICD10, "J84.2")} == {"ild"}


def test_a_hospital_can_replace_the_defaults(tmp_path):
    own = tmp_path / "map.yaml"
    own.write_text("replace_defaults: true\nconditions:\n  ild: [{system: 'urn:hospital:dx', code: ILD-7}]\n")
    cm = load_concept_map(str(own))
    assert cm.concepts("conditions", ICD10, "J84.10") == []


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConceptMapError, match="does not exist"):
        load_concept_map(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("snomed_first", [True, False])
def test_a_glucocorticoid_coded_in_two_systems_is_one_ingredient_whatever_the_coding_order(tmp_path, snomed_first):
    """An ongoing prednisolone statement ends the day before the next prednisolone statement starts, also
    when the hospital codes that one in SNOMED beside RxNorm (its concept-map entry names the ingredient)."""
    from datetime import date

    from analytics.cohort.facts import build_facts
    from etl.fhir.types import flatten_all
    from synthetic import fhir_builders as fb

    own = tmp_path / "map.yaml"
    own.write_text("medications:\n  glucocorticoid:\n"
                   "    - {system: SNOMED, code: '116601002', factor: 1, ingredient: prednisolone}\n")
    first = fb.medication_statement("ms1", "p", fb.RXNORM, "8638", date(2016, 3, 1), None, dose=40, status="active")
    second = fb.medication_statement("ms2", "p", fb.RXNORM, "8638", date(2016, 6, 9), None, dose=20, status="active")
    snomed = {"system": fb.SNOMED, "code": "116601002"}
    codings = second["medicationCodeableConcept"]["coding"]
    second["medicationCodeableConcept"]["coding"] = [snomed, *codings] if snomed_first else [*codings, snomed]
    facts = build_facts(flatten_all({"Patient": [fb.patient("p", "female", "1960")], "MedicationStatement": [first, second]}),
                        load_concept_map(str(own)))
    ends = facts.exposures.set_index("statement_id")["end"]
    assert ends["ms1"] == date(2016, 6, 8)


def test_a_glucocorticoid_code_without_its_factor_is_refused_at_load(tmp_path):
    own = tmp_path / "map.yaml"
    own.write_text("medications:\n  glucocorticoid:\n    - {system: SNOMED, code: '116601002'}\n")
    with pytest.raises(ConceptMapError, match="needs its prednisolone-equivalent factor"):
        load_concept_map(str(own))
