"""The synthetic hospital is deterministic, valid FHIR R4, and covers every path of the contract."""
from __future__ import annotations

import collections

from etl.fhir.validation import validation_errors
from synthetic.hospital import PROSPECTIVE_ATTRITION_REASONS, RETRO_ATTRITION_REASONS, HospitalParams, generate_hospital
from tests.conftest import SMALL_HOSPITAL


def test_same_seed_same_hospital_other_seed_other_hospital():
    assert generate_hospital(SMALL_HOSPITAL).resources == generate_hospital(SMALL_HOSPITAL).resources
    other = HospitalParams(**{**SMALL_HOSPITAL.__dict__, "seed": 8})
    assert generate_hospital(other).resources != generate_hospital(SMALL_HOSPITAL).resources


def test_every_resource_is_valid_r4_with_a_unique_id(small_hospital):
    for r in small_hospital.resources:
        assert validation_errors(r, r["resourceType"]) == [], r
    keys = collections.Counter((r["resourceType"], r["id"]) for r in small_hospital.resources)
    assert max(keys.values()) == 1


def test_every_resource_type_and_every_exclusion_path_is_present(small_hospital):
    types = {r["resourceType"] for r in small_hospital.resources}
    assert types == {"Patient", "Condition", "MedicationStatement", "Procedure", "Observation", "AdverseEvent",
                     "ResearchStudy", "ResearchSubject"}
    reasons = {t["retro_reason"] for t in small_hospital.truth}
    assert set(RETRO_ATTRITION_REASONS) <= reasons
    assert set(PROSPECTIVE_ATTRITION_REASONS) <= {t["prospective"] for t in small_hospital.truth}


def test_both_groups_and_all_outcomes_occur(small_hospital):
    cohort = [t for t in small_hospital.truth if t["retro_reason"] is None]
    assert {t["group"] for t in cohort} == {"tacrolimus", "conventional"}
    for outcome in ("death_event", "relapse_event", "resp_relapse_event"):
        assert 0 < sum(t[outcome] for t in cohort) < len(cohort)


def test_a_hospitals_propensity_model_and_case_mix_decide_who_gets_tacrolimus():
    """Multi-site demo hospitals differ in how clinicians choose treatment and whom they see (synthetic/consortium.py)."""
    from synthetic.hospital import TreatmentPropensity

    def cohort(**kwargs):
        h = generate_hospital(HospitalParams(seed=11, n_retrospective=60, n_prospective_enrolled=4, n_noise=0,
                                             attrition_per_reason=1, messy=False, **kwargs))
        return [t for t in h.truth if t["retro_reason"] is None and t["prospective"] is None]

    rarely = cohort(propensity=TreatmentPropensity(intercept=-6.0))
    mostly = cohort(propensity=TreatmentPropensity(intercept=4.0))
    assert sum(t["group"] == "tacrolimus" for t in rarely) <= 3 < 55 <= sum(t["group"] == "tacrolimus" for t in mostly)
    amyopathic = cohort(subset_mix=(0.0, 0.0, 1.0, 0.0), mean_age=70.0)
    assert {t["diagnosis_subset"] for t in amyopathic} == {"CADM"}
    assert sum(t["age"] for t in amyopathic) / len(amyopathic) > 62
