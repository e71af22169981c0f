"""The consortium's key list: who may sign what. One YAML file, the same at every site and at the
coordinator (it holds public keys only, so it can be shared openly):

    coordinator: |
      -----BEGIN PUBLIC KEY-----
      ...
    sites:
      north: |
        -----BEGIN PUBLIC KEY-----
        ...
    contract_digest: 3f2a…   # optional: pin the contract every party must work under
    data_cutoff: 2026-01-01  # optional: the agreed data cut-off; a package cut off at another date is rejected

A key may also be given as the path of a PEM file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .signing import SigningKeyError, load_public_key

_SITE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConsortiumError(ValueError):
    """The key list is missing, malformed, or names a site with an invalid id or key."""


@dataclass(frozen=True)
class Consortium:
    coordinator_key: Ed25519PublicKey
    site_keys: dict[str, Ed25519PublicKey]
    contract_digest: str | None = None
    data_cutoff: date | None = None

    @property
    def sites(self) -> list[str]:
        return sorted(self.site_keys)


def load_consortium(path: str | Path) -> Consortium:
    file = Path(path)
    if not file.is_file():
        raise ConsortiumError(f"consortium key list {file} does not exist (FEDERATION_CONSORTIUM)")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConsortiumError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sites"), dict) or "coordinator" not in data:
        raise ConsortiumError(f"{file}: needs 'coordinator' (a public key) and 'sites' (site id: public key)")
    try:
        coordinator = load_public_key(str(data["coordinator"]))
        sites = {}
        for site, key in data["sites"].items():
            if not isinstance(site, str) or not _SITE.match(site):
                raise ConsortiumError(f"{file}: site id {site!r} must be lower-case letters, digits, '_' or '-'")
            sites[site] = load_public_key(str(key))
    except SigningKeyError as exc:
        raise ConsortiumError(f"{file}: {exc}") from None
    digest = data.get("contract_digest")
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
        raise ConsortiumError(f"{file}: contract_digest must be a SHA-256 hex digest")
    cutoff = data.get("data_cutoff")
    if cutoff is not None and (not isinstance(cutoff, date) or hasattr(cutoff, "hour")):
        raise ConsortiumError(f"{file}: data_cutoff must be a date (YYYY-MM-DD), not {cutoff!r}")
    return Consortium(coordinator, sites, digest, cutoff)
