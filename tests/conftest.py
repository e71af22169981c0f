"""Shared fixtures: a real sandbox FHIR server (sekmet-fhir) loaded with a small synthetic hospital."""
from __future__ import annotations

from typing import Iterator

import pytest

from synthetic.hospital import Hospital, HospitalParams, generate_hospital
from synthetic.load import load_server
from synthetic.sandbox import SandboxFhirServer

SMALL_HOSPITAL = HospitalParams(seed=7, n_retrospective=80, n_prospective_enrolled=12, n_noise=25, attrition_per_reason=1)


@pytest.fixture(scope="session")
def small_hospital() -> Hospital:
    return generate_hospital(SMALL_HOSPITAL)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, small_hospital: Hospital) -> Iterator[SandboxFhirServer]:
    with SandboxFhirServer(tmp_path_factory.mktemp("fhir-server")) as server:
        load_server(server.base_url, small_hospital.resources)
        yield server
