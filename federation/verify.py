"""Every document from another party is checked here before use: strict JSON, signature by the party it
claims to come from (with the key the consortium lists for it), schema version, JSON schema, and the
contract digest. A rejection says which check failed and why, in words a data engineer can act on."""
from __future__ import annotations

from typing import Any, Mapping

import jsonschema
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import parse
from .contract import contract_digest
from .schema import SCHEMA_VERSION, SCHEMAS
from .signing import SignatureError, verify

REJECTION_CODES = ("malformed", "unsigned", "unknown_signer", "bad_signature", "wrong_kind", "schema_version", "schema",
                   "contract_digest")


class PackageRejected(ValueError):
    """A document failed a check; ``code`` is one of REJECTION_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message


def verify_document(data: bytes | str, kind: str, trusted: Mapping[str, Ed25519PublicKey], *,
                    expected_digest: str | None = None, expected_signer: str | None = None) -> dict[str, Any]:
    """The verified payload of a ``kind`` document (site_aggregates, round_request, round_reply), else PackageRejected.

    Site documents must be signed by the site they name (``site_id``); ``expected_digest`` is the contract
    digest the reader works under (None: only check that the terms hash to the digest they claim)."""
    try:
        envelope = parse(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageRejected("malformed", f"not valid JSON ({exc})") from None
    try:
        payload = verify(envelope, trusted, expected_signer)
    except SignatureError as exc:
        raise PackageRejected(exc.code, str(exc)) from None
    if payload.get("kind") != kind:
        raise PackageRejected("wrong_kind", f"a {payload.get('kind')!r} document where a {kind!r} was expected")
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise PackageRejected("schema_version", f"schema version {payload.get('schema_version')!r}; this coordinator "
                                                f"reads {SCHEMA_VERSION!r} (upgrade the older side)")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMAS[kind]).iter_errors(payload))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise PackageRejected("schema", f"{where}: {error.message[:300]}")
    signer = envelope["signature"]["signer"]
    if "site_id" in payload and payload["site_id"] != signer:
        raise PackageRejected("bad_signature", f"signed by {signer!r} but names site {payload['site_id']!r}")
    digest = payload["contract"]["digest"] if kind == "site_aggregates" else payload["contract_digest"]
    if kind == "site_aggregates" and contract_digest(payload["contract"]["terms"]) != digest:
        raise PackageRejected("contract_digest", "the contract terms in the package do not hash to the digest it states")
    if expected_digest is not None and digest != expected_digest:
        raise PackageRejected("contract_digest", f"works under contract {digest[:12]}…, expected {expected_digest[:12]}…: "
                                                 "different rule parameters, concept map defaults or analysis")
    return payload
