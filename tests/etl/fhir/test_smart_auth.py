"""SMART Backend Services against the sandbox server with SMART auth switched on (etl.fhir.auth)."""
from __future__ import annotations

import time
from typing import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from etl.fhir.auth import AuthError, SmartBackendAuth
from etl.fhir.client import FhirClient, FhirError
from synthetic.sandbox import SandboxFhirServer

KEYS = {"RS384": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES384": ec.generate_private_key(ec.SECP384R1())}


def pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def jwk(alg: str) -> dict:
    public = KEYS[alg].public_key()
    as_dict = (RSAAlgorithm if alg.startswith("RS") else ECAlgorithm).to_jwk(public, as_dict=True)
    return {**as_dict, "kid": f"key-{alg}", "alg": alg}


@pytest.fixture(scope="module")
def smart_server(tmp_path_factory) -> Iterator[SandboxFhirServer]:
    auth = {"types": ["smart"], "token_lifetime": 3600,
            # One client per key: sekmet 0.1.1 answers 500 when an ES384 assertion meets a registered RSA key.
            "smart_clients": [{"client_id": f"iimild-{alg}", "scopes": "system/*.read", "jwks": {"keys": [jwk(alg)]}}
                              for alg in KEYS]}
    with SandboxFhirServer(tmp_path_factory.mktemp("smart-server"), server_auth=auth) as server:
        yield server


def smart(server: SandboxFhirServer, alg: str, monkeypatch, key_env: str = "TEST_SMART_KEY") -> SmartBackendAuth:
    monkeypatch.setenv(key_env, pem(KEYS[alg]))
    return SmartBackendAuth(server.base_url, f"iimild-{alg}", key_env, f"key-{alg}", alg)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_token_opens_the_server(smart_server, monkeypatch, alg):
    auth = smart(smart_server, alg, monkeypatch)
    with FhirClient(smart_server.base_url, auth=auth) as client:
        assert client.count("Patient") == 0
    assert auth.token_url.endswith("/auth/token")  # discovered from .well-known/smart-configuration


def test_assertion_carries_kid_and_the_token_endpoint_as_audience(monkeypatch):
    monkeypatch.setenv("K", pem(KEYS["RS384"]))
    auth = SmartBackendAuth("https://h/fhir", "me", "K", "key-RS384", "RS384")
    token = auth.client_assertion("https://h/auth/token")
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, KEYS["RS384"].public_key(), algorithms=["RS384"], audience="https://h/auth/token")
    assert header["kid"] == "key-RS384" and header["alg"] == "RS384"
    assert claims["iss"] == claims["sub"] == "me" and claims["exp"] - claims["iat"] <= 300 and claims["jti"]


def test_a_token_near_expiry_is_replaced_and_a_401_gets_one_fresh_try(smart_server, monkeypatch):
    auth = smart(smart_server, "RS384", monkeypatch)
    fetched = []
    real_fetch = auth._fetch_token
    monkeypatch.setattr(auth, "_fetch_token", lambda http: (fetched.append(1), real_fetch(http)))
    with FhirClient(smart_server.base_url, auth=auth) as client:
        client.count("Patient")
        client.count("Patient")
        assert len(fetched) == 1
        auth._expires_at = time.time() + 30  # within the refresh margin
        client.count("Patient")
        assert len(fetched) == 2
        auth._token, auth._expires_at = "revoked-by-the-server", time.time() + 3600
        client.count("Patient")  # 401, invalidate, new assertion, success
        assert len(fetched) == 3


def test_failures_say_what_failed_and_never_show_the_secret(smart_server, monkeypatch):
    with FhirClient(smart_server.base_url, max_retries=0) as client, pytest.raises(FhirError, match="401"):
        client.count("Patient")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    monkeypatch.setenv("WRONG_KEY", pem(other))
    auth = SmartBackendAuth(smart_server.base_url, "iimild-RS384", "WRONG_KEY", "key-RS384", "RS384")
    with FhirClient(smart_server.base_url, auth=auth) as client, pytest.raises(AuthError) as caught:
        client.count("Patient")
    text = str(caught.value)
    assert "verification failed" in text and "PRIVATE KEY" not in text and pem(other)[40:80] not in text
    monkeypatch.delenv("WRONG_KEY")
    with pytest.raises(AuthError, match="WRONG_KEY is not set"):
        auth.client_assertion("https://h/auth/token")


def test_sha_256_algorithms_are_refused():
    with pytest.raises(AuthError, match="RS384"):
        SmartBackendAuth("https://h", "me", "K", "kid", "RS256")


def test_a_discovered_token_endpoint_on_another_origin_gets_no_assertion(monkeypatch):
    """A tampered .well-known document must not send the signed client assertion elsewhere (issue 13)."""
    import httpx
    import orjson

    from tests.stub_fhir import StubServer, json_response

    with StubServer(lambda m, p, h: json_response(orjson.dumps({"access_token": "t", "expires_in": 300}))) as evil:
        config = orjson.dumps({"token_endpoint": f"{evil.origin}/token"})
        with StubServer(lambda m, p, h: json_response(config)) as server:
            monkeypatch.setenv("K", pem(KEYS["RS384"]))
            auth = SmartBackendAuth(server.base_url, "me", "K", "key-RS384", "RS384")
            with FhirClient(server.base_url, auth=auth) as client:
                with pytest.raises(AuthError, match="neither the FHIR server's origin nor in FHIR_TRUSTED_ORIGINS"):
                    client.count("Patient")
            assert evil.requests == []
            trusted = SmartBackendAuth(server.base_url, "me", "K", "key-RS384", "RS384", trusted_origins=(evil.origin,))
            with httpx.Client() as http:
                assert trusted.headers(http) == {"Authorization": "Bearer t"} and len(evil.requests) == 1
