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


def test_a_malformed_map_names_the_entry(tmp_path):
    bad = tmp_path / "map.yaml"
    bad.write_text("systems: {ICD10: http://hl7.org/fhir/sid/icd-10-cm}\nconditions:\n  ild: [{system: ICD10}]\n")
    with pytest.raises(ConceptMapError, match=r"conditions\.ild\[0\] needs a system and exactly one of code or prefix"):
        load_concept_map(str(bad))


def test_a_hospital_can_add_its_own_codes(tmp_path):
    default = load_concept_map()
    extended = tmp_path / "map.yaml"
    extended.write_text(default_text().replace("ild:\n", "ild:\n    - {system: 'urn:hospital:dx', code: ILD-7}\n", 1))
    cm = load_concept_map(str(extended))
    assert {n for n, _ in cm.concepts("conditions", "urn:hospital:dx", "ILD-7")} == {"ild"}
    assert cm.digest != default.digest


def default_text() -> str:
    from analytics.cohort.concepts import DEFAULT_CONCEPT_MAP

    return DEFAULT_CONCEPT_MAP.read_text()
