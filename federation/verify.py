"""Every document from another party is checked here before use: strict JSON, signature by the party it
claims to come from (with the key the consortium lists for it), schema version, JSON schema, and the
contract digest; then, for a site package, what its signature cannot vouch for: that its site's software
withheld every small count, that its figures fit together, that it was cut off when the consortium agreed.
A rejection says which check failed and why, in words a data engineer can act on."""
from __future__ import annotations

from datetime import date
from typing import Any, Iterator, Mapping

import jsonschema
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import parse
from .contract import contract_digest
from .schema import SCHEMA_VERSION, SCHEMAS
from .signing import SignatureError, verify
from .suppression import DEFAULT_THRESHOLD

REJECTION_CODES = ("malformed", "unsigned", "unknown_signer", "bad_signature", "wrong_kind", "schema_version", "schema",
                   "contract_digest", "small_cell", "inconsistent", "data_cutoff")


class PackageRejected(ValueError):
    """A document failed a check; ``code`` is one of REJECTION_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message


def _counts(payload: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    """Every published count of a site package, by its dotted name (as in suppression.withheld)."""
    yield "cohort.n", payload["cohort"]["n"]
    yield from ((f"cohort.groups.{g}", n) for g, n in payload["cohort"]["groups"].items())
    for cohort, a in payload["attrition"].items():
        yield from ((f"attrition.{cohort}.{k}", a[k]) for k in ("screened", "included"))
        yield from ((f"attrition.{cohort}.excluded.{r}", n) for r, n in a["excluded"].items())
    for name, c in payload["comparisons"].items():
        yield from ((f"comparisons.{name}.{k}", c[k]) for k in ("n_treated", "n_control"))
        for outcome, o in c["outcomes"].items():
            yield from ((f"comparisons.{name}.outcomes.{outcome}.{k}", o[k]) for k in ("events_treated", "events_control"))


def check_site_package(payload: Mapping[str, Any], *, min_threshold: int = DEFAULT_THRESHOLD,
                       expected_data_cutoff: date | None = None) -> None:
    """What a schema-valid site package says, re-checked: no count of 1 … threshold-1 (under the package's own
    threshold, which may not be below the consortium's ``min_threshold``), an ESS no larger than its arm, and the
    consortium's data cut-off. Raises PackageRejected."""
    threshold = payload["suppression"]["threshold"]
    if threshold < min_threshold:
        raise PackageRejected("small_cell", f"suppression threshold {threshold} is below the consortium's {min_threshold}")
    small = [name for name, n in _counts(payload) if n is not None and 0 < n < threshold]
    if small:
        raise PackageRejected("small_cell", f"{len(small)} published count(s) under the suppression threshold {threshold}: "
                                            f"{', '.join(small[:5])}")
    survivors = [f"comparisons.{name}.outcomes.{outcome}.events_{arm}"
                 for name, c in payload["comparisons"].items() for outcome, o in c["outcomes"].items()
                 for arm in ("treated", "control")
                 if c[f"n_{arm}"] is not None and o[f"events_{arm}"] is not None
                 and 0 < c[f"n_{arm}"] - o[f"events_{arm}"] < threshold]
    if survivors:   # "all but 2 had the event" names 2 patients as surely as a published 2
        raise PackageRejected("small_cell", f"{len(survivors)} arm(s) whose patients without the event number 1 … "
                                            f"threshold-1 ({threshold}): {', '.join(survivors[:5])}")
    for name, c in payload["comparisons"].items():
        for arm in ("treated", "control"):
            ess, n = c[f"ess_{arm}"], c[f"n_{arm}"]
            if ess is not None and (n is None or ess > n * (1 + 1e-9)):
                raise PackageRejected("inconsistent", f"comparisons.{name}.ess_{arm} = {ess:.6g} exceeds the arm's size ({n})")
    cutoff = payload["contract"]["data_cutoff"]
    if expected_data_cutoff is not None and cutoff != expected_data_cutoff.isoformat():
        raise PackageRejected("data_cutoff", f"data cut-off {cutoff}; the consortium's is {expected_data_cutoff.isoformat()}")


def verify_document(data: bytes | str, kind: str, trusted: Mapping[str, Ed25519PublicKey], *,
                    expected_digest: str | None = None, expected_signer: str | None = None,
                    min_threshold: int = DEFAULT_THRESHOLD, expected_data_cutoff: date | None = None) -> dict[str, Any]:
    """The verified payload of a ``kind`` document (site_aggregates, round_request, round_reply), else PackageRejected.

    Site documents must be signed by the site they name (``site_id``); ``expected_digest`` is the contract
    digest the reader works under (None: only check that the terms hash to the digest they claim). A site
    package is then re-checked by check_site_package (``min_threshold``, ``expected_data_cutoff``: None, any)."""
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
    if kind == "site_aggregates":
        check_site_package(payload, min_threshold=min_threshold, expected_data_cutoff=expected_data_cutoff)
    return payload
