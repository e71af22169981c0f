"""One place per fact: each FHIR type's knowledge (etl.fhir.types), the sync modes and auth methods by name."""
import pytest

from etl.fhir.auth import AUTH_METHODS, AuthSettings, BearerTokenAuth, NoAuth, SmartBackendAuth, build_auth
from etl.fhir.plausibility import subject_reference
from etl.fhir.types import RESOURCE_TYPES, TYPES, spec
from etl.ingest.modes import SYNC_MODES, SyncRequest, run_sync, sync_mode
from etl.ingest.scoped import patient_id


def test_every_pulled_type_has_a_flattener_and_patient_data_has_a_subject_and_a_search_parameter():
    assert RESOURCE_TYPES == tuple(TYPES)
    for t in TYPES.values():
        assert t.flatten is not None, t.name
        if t.patient_data and t.name != "Patient":
            assert t.subject_field and t.patient_search, t.name
    assert not spec("ResearchStudy").patient_data and spec("Patient").patient_search == "_id"


def test_the_subject_field_is_read_the_same_way_by_plausibility_and_the_cohort_first_scope():
    enrolment = {"resourceType": "ResearchSubject", "id": "rs", "individual": {"reference": "Patient/p1"}}
    assert subject_reference(enrolment, None) == [] and patient_id(enrolment) == "p1"
    assert subject_reference({"resourceType": "ResearchSubject", "id": "rs", "subject": {"reference": "Patient/p1"}}, None) == \
        ["individual: missing (the resource belongs to no patient)"]
    # A type this service does not list is read as most R4 types are.
    assert spec("Encounter").subject_field == "subject" and spec("Encounter").patient_search == "patient"


def test_sync_modes_are_chosen_by_name_and_an_unknown_name_is_refused():
    assert set(SYNC_MODES) == {"incremental", "bulk", "cohort-first", "ndjson"}
    assert not sync_mode("ndjson").needs_server and sync_mode("bulk").needs_server
    with pytest.raises(ValueError, match="FHIR_SYNC_MODE must be one of incremental, bulk, cohort-first, ndjson, not 'bluk'"):
        run_sync("bluk", SyncRequest(warehouse=None, resource_types=[]), client=lambda: None)  # type: ignore[arg-type]


def test_a_mode_without_a_server_opens_no_connection(tmp_path):
    from etl.warehouse import Warehouse

    def no_client():
        raise AssertionError("the NDJSON mode must not connect to a server")

    with pytest.raises(FileNotFoundError, match="no \\*.ndjson files"):
        run_sync("ndjson", SyncRequest(Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}"), ["Patient"], ndjson_dir=str(tmp_path)),
                 client=no_client)


def test_auth_methods_are_chosen_by_name_and_an_unknown_name_is_refused():
    settings = AuthSettings("https://fhir.example.org/r4", smart_client_id="c", smart_kid="k")
    assert isinstance(build_auth("none", settings), NoAuth)
    assert isinstance(build_auth("bearer", settings), BearerTokenAuth)
    assert isinstance(build_auth("smart", settings), SmartBackendAuth)
    assert set(AUTH_METHODS) == {"none", "bearer", "smart"}
    with pytest.raises(ValueError, match="FHIR_AUTH must be one of none, bearer, smart, not 'basic'"):
        build_auth("basic", settings)
