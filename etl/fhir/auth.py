"""How the FHIR client authenticates: nothing, a static bearer token, or SMART Backend Services.

Every secret is read from an environment variable named in configuration, at the moment it is
needed, so no secret ever sits in Dagster config, run metadata, logs or exception text.

SMART Backend Services (SMART App Launch 2.x, "client-confidential-asymmetric"): the client signs a
short-lived JWT (RS384 or ES384, with ``kid``) with its private key, posts it to the token endpoint
found in ``.well-known/smart-configuration`` and receives an access token. A fresh assertion is
made whenever the token is within ``refresh_margin_s`` of expiry, and once more after a 401.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import httpx

from .urls import origin

SIGNING_ALGORITHMS = ("RS384", "ES384")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class AuthError(RuntimeError):
    """Authentication failed; the message names the step, never the secret."""


class Auth(Protocol):
    def headers(self, http: httpx.Client) -> dict[str, str]: ...

    def invalidate(self) -> None:
        """Forget any cached credential (called once after a 401)."""


class NoAuth:
    def headers(self, http: httpx.Client) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        pass


@dataclass
class BearerTokenAuth:
    """A static token (an API gateway key, a long-lived service token)."""

    token_env: str

    def headers(self, http: httpx.Client) -> dict[str, str]:
        token = os.environ.get(self.token_env)
        if not token:
            raise AuthError(f"bearer token variable {self.token_env} is not set")
        return {"Authorization": f"Bearer {token}"}

    def invalidate(self) -> None:
        pass


def _read_secret(env: str) -> bytes:
    """A PEM key given in the variable itself, or a path to a PEM file (the common secret-mount layout)."""
    value = os.environ.get(env)
    if not value:
        raise AuthError(f"private key variable {env} is not set")
    if "-----BEGIN" in value:
        return value.encode()
    path = Path(value)
    if not path.is_file():
        raise AuthError(f"private key variable {env} names no readable file")
    return path.read_bytes()


@dataclass
class SmartBackendAuth:
    """SMART Backend Services client (private_key_jwt + client_credentials)."""

    base_url: str
    client_id: str
    private_key_env: str
    kid: str
    algorithm: str = "RS384"
    scope: str = "system/*.read"
    token_url: str | None = None     # discovered from .well-known/smart-configuration when empty
    trusted_origins: tuple[str, ...] = ()  # origins besides the FHIR server's that may receive the assertion
    assertion_lifetime_s: int = 300  # the spec's maximum
    refresh_margin_s: float = 60.0
    _token: str | None = field(default=None, repr=False)
    _expires_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.algorithm not in SIGNING_ALGORITHMS:
            raise AuthError(f"SMART signing algorithm must be one of {SIGNING_ALGORITHMS}, not {self.algorithm!r}")

    def discover(self, http: httpx.Client) -> str:
        if self.token_url:
            return self.token_url
        url = f"{self.base_url.rstrip('/')}/.well-known/smart-configuration"
        # No redirects: a hop to another origin would carry what the pin above refuses (httpx re-sends a POST body).
        response = http.get(url, headers={"Accept": "application/json"}, follow_redirects=False)
        if response.status_code != 200:
            raise AuthError(f"SMART discovery at {url} answered HTTP {response.status_code}")
        try:
            config = response.json()
        except ValueError:
            raise AuthError(f"SMART configuration at {url} is not JSON") from None
        if not isinstance(config, dict) or "token_endpoint" not in config:
            raise AuthError(f"SMART configuration at {url} has no token_endpoint")
        supported = config.get("token_endpoint_auth_signing_alg_values_supported")
        if supported and self.algorithm not in supported:
            raise AuthError(f"server does not accept {self.algorithm} client assertions (it offers {supported})")
        endpoint = str(config["token_endpoint"])
        # The signed assertion is a credential: a discovered endpoint must be on the FHIR server's origin or on
        # one the operator trusts, so a tampered discovery document cannot send it elsewhere.
        allowed = {origin(self.base_url), *(origin(o) for o in self.trusted_origins)}
        if origin(endpoint) not in allowed:
            raise AuthError(f"SMART token endpoint {origin(endpoint)} is neither the FHIR server's origin nor in "
                            "FHIR_TRUSTED_ORIGINS; refusing to send it a client assertion")
        self.token_url = endpoint
        return self.token_url

    def client_assertion(self, token_url: str) -> str:
        import jwt
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(_read_secret(self.private_key_env), password=None)
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": token_url, "jti": uuid.uuid4().hex,
                  "iat": now, "exp": now + self.assertion_lifetime_s}
        return jwt.encode(claims, key, algorithm=self.algorithm, headers={"kid": self.kid, "typ": "JWT"})

    def _fetch_token(self, http: httpx.Client) -> None:
        token_url = self.discover(http)
        response = http.post(token_url, follow_redirects=False, data={
            "grant_type": "client_credentials", "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.client_assertion(token_url)})
        if response.status_code != 200:
            try:
                body = response.json()
                reason = f"{body.get('error')}: {body.get('error_description', '')}"
            except ValueError:
                reason = response.text[:200]
            raise AuthError(f"SMART token request to {token_url} failed (HTTP {response.status_code}): {reason}")
        try:
            body = response.json()
            token, lifetime = body["access_token"], float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AuthError(f"SMART token endpoint {origin(token_url)} answered without a usable access_token") from None
        if not isinstance(token, str) or not token:
            raise AuthError(f"SMART token endpoint {origin(token_url)} answered without a usable access_token")
        self._token = token
        self._expires_at = time.time() + lifetime

    def headers(self, http: httpx.Client) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.time() >= self._expires_at - self.refresh_margin_s:
                self._fetch_token(http)
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        with self._lock:
            self._token, self._expires_at = None, 0.0


@dataclass(frozen=True)
class AuthSettings:
    """Everything an auth method may need, by name only for secrets (the variables are read when used)."""
    base_url: str
    bearer_token_env: str = "FHIR_BEARER_TOKEN"  # noqa: S105 - the *name* of the variable holding the token
    smart_client_id: str = ""
    smart_private_key_env: str = "FHIR_SMART_PRIVATE_KEY"
    smart_kid: str = ""
    smart_algorithm: str = "RS384"
    smart_scope: str = "system/*.read"
    smart_token_url: str = ""
    trusted_origins: tuple[str, ...] = ()


AUTH_METHODS: dict[str, Callable[[AuthSettings], Auth]] = {
    "none": lambda s: NoAuth(),
    "bearer": lambda s: BearerTokenAuth(s.bearer_token_env),
    "smart": lambda s: SmartBackendAuth(s.base_url, s.smart_client_id, s.smart_private_key_env, s.smart_kid,
                                        s.smart_algorithm, s.smart_scope, s.smart_token_url or None,
                                        trusted_origins=s.trusted_origins),
}


def check_auth_method(method: str) -> None:
    if method not in AUTH_METHODS:
        raise ValueError(f"FHIR_AUTH must be one of {', '.join(AUTH_METHODS)}, not {method!r}")


def build_auth(method: str, settings: AuthSettings) -> Auth:
    check_auth_method(method)
    return AUTH_METHODS[method](settings)
