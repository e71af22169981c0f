"""Ed25519 signatures over canonical JSON, with keys from the environment.

Ed25519 rather than a shared HMAC key: with HMAC the coordinator would hold every site's secret and could
forge a site's package; with Ed25519 a site keeps its private key and the consortium shares public keys
(``python -m federation.keys`` makes a pair). Uses ``cryptography``, already a dependency.
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .canonical import canonical_bytes

ALGORITHM = "Ed25519"
ENVELOPE_FORMAT = "iimild-federation-envelope/1"
SIGNING_KEY_ENV = "FEDERATION_SIGNING_KEY"  # PEM text, or the path of a PEM file (PKCS#8 Ed25519 private key)


class SigningKeyError(ValueError):
    """The signing key is missing or not an Ed25519 private key."""


class SignatureError(ValueError):
    """An envelope is unsigned, signed by an unknown party, or its signature does not verify."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _pem(text_or_path: str) -> bytes:
    text = text_or_path.strip()
    if not text.startswith("-----BEGIN"):
        path = Path(text)
        if not path.is_file():
            raise SigningKeyError("the key is neither PEM text nor the path of a PEM file")
        text = path.read_text()
    return text.encode()


def load_private_key(text_or_path: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_pem(text_or_path), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not a PEM private key: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the signing key must be Ed25519, not {type(key).__name__}")
    return key


def signing_key_from_env(variable: str = SIGNING_KEY_ENV) -> Ed25519PrivateKey:
    value = os.environ.get(variable, "")
    if not value:
        raise SigningKeyError(f"{variable} is not set (PEM text or a PEM file path of the site's Ed25519 key)")
    return load_private_key(value)


def load_public_key(text_or_path: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_pem(text_or_path))
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not a PEM public key: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"public keys must be Ed25519, not {type(key).__name__}")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


@dataclass(frozen=True)
class Signer:
    """A party (a site id or "coordinator") and its private key."""

    party: str
    key: Ed25519PrivateKey

    def sign(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        value = self.key.sign(canonical_bytes(payload))
        return {"format": ENVELOPE_FORMAT, "payload": payload,
                "signature": {"algorithm": ALGORITHM, "signer": self.party, "key_sha256": fingerprint(self.key),
                              "value": base64.b64encode(value).decode()}}


def verify(envelope: Any, trusted: Mapping[str, Ed25519PublicKey], expected_signer: str | None = None) -> dict[str, Any]:
    """The payload of ``envelope`` if it is signed by ``expected_signer`` (any trusted party if None) with the
    key the consortium lists for it; else SignatureError with the reason."""
    if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT or not isinstance(envelope.get("payload"), dict):
        raise SignatureError("malformed", f"not a signed envelope (expected format {ENVELOPE_FORMAT!r} with a payload)")
    sig = envelope.get("signature")
    if not isinstance(sig, dict) or not sig.get("value"):
        raise SignatureError("unsigned", "the package is not signed")
    if sig.get("algorithm") != ALGORITHM:
        raise SignatureError("bad_signature", f"signature algorithm {sig.get('algorithm')!r}, expected {ALGORITHM}")
    signer = sig.get("signer")
    if expected_signer is not None and signer != expected_signer:
        raise SignatureError("bad_signature", f"signed by {signer!r}, expected {expected_signer!r}")
    key = trusted.get(signer) if isinstance(signer, str) else None
    if key is None:
        raise SignatureError("unknown_signer", f"no public key for {signer!r} in the consortium's key list")
    try:
        key.verify(base64.b64decode(sig["value"], validate=True), canonical_bytes(envelope["payload"]))
    except (InvalidSignature, ValueError, TypeError):
        raise SignatureError("bad_signature", f"the signature of {signer!r} does not verify: the content was changed "
                                              "after signing, or it was signed with another key") from None
    return envelope["payload"]
