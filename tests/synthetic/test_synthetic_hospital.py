"""The synthetic hospital is deterministic, valid FHIR R4, and covers every path of the contract."""
from __future__ import annotations

import collections
import itertools

import orjson

from etl.fhir.validation import validation_errors
from synthetic.hospital import PROSPECTIVE_ATTRITION_REASONS, RETRO_ATTRITION_REASONS, HospitalParams, generate_hospital, stream_hospital
from synthetic.load import write_ndjson_stream
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


def test_the_streamed_hospital_is_the_generated_hospital_patient_by_patient(small_hospital):
    records = list(stream_hospital(SMALL_HOSPITAL))
    assert [r for p in records for r in p.resources] == small_hospital.resources
    assert [p.truth for p in records if p.truth is not None] == small_hospital.truth
    # one record per patient (after the study's ResearchStudy), each holding only that patient's resources
    assert records[0].truth is None and {r["resourceType"] for r in records[0].resources} == {"ResearchStudy"}
    for p in records[1:]:
        pid = p.truth["fhir_patient_id"]
        assert {r["id"] if r["resourceType"] == "Patient" else r["subject" if "subject" in r else "individual"]["reference"]
                .rsplit("/", 1)[-1] for r in p.resources} == {pid}


def test_the_streamed_hospital_yields_before_it_generates_the_rest():
    # Ten million patients could not be built in the test's time or memory: the first three come at once.
    huge = HospitalParams(seed=7, n_retrospective=10_000_000, n_noise=10_000_000)
    first = list(itertools.islice(stream_hospital(huge), 4))
    assert [p.truth["fhir_patient_id"] for p in first[1:]] == ["pt-00001", "pt-00002", "pt-00003"]


def test_the_streamed_ndjson_files_hold_the_generated_hospital(tmp_path, small_hospital):
    counts = write_ndjson_stream(stream_hospital(SMALL_HOSPITAL), tmp_path / "ndjson", tmp_path / "truth.ndjson")
    by_type = small_hospital.by_type()
    assert counts == {t: len(rs) for t, rs in by_type.items()}
    for rtype, resources in by_type.items():
        assert [orjson.loads(line) for line in (tmp_path / "ndjson" / f"{rtype}.ndjson").read_bytes().splitlines()] == \
            orjson.loads(orjson.dumps(resources))
    truth = [orjson.loads(line) for line in (tmp_path / "truth.ndjson").read_bytes().splitlines()]
    assert [t["fhir_patient_id"] for t in truth] == [t["fhir_patient_id"] for t in small_hospital.truth]
