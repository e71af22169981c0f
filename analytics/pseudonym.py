"""Stable pseudonyms for patients: a keyed HMAC-SHA256 of the FHIR Patient id.

Keyed, so that nobody without the secret can recompute a pseudonym from a known hospital id
(a plain hash of an MRN-like id is reversible by enumeration).
"""
from __future__ import annotations

import hashlib
import hmac

import pandas as pd


class PseudonymKeyError(ValueError):
    """The pseudonym key is missing or too short to be a secret."""


def check_key(key: str) -> bytes:
    if not key or len(key) < 16:
        raise PseudonymKeyError("PSEUDONYM_KEY must be set to a secret of at least 16 characters")
    return key.encode("utf-8")


def patient_key(fhir_patient_id: str, key: str) -> str:
    return hmac.new(check_key(key), fhir_patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


class Pseudonyms:
    """``patient_key`` of many ids with one key: the keyed hash is prepared once, and an id met again (a raw table
    names each patient in thousands of rows) is not hashed again while it is remembered. At most ``limit`` ids are
    remembered, so memory does not grow with the hospital."""

    def __init__(self, key: str, limit: int = 100_000) -> None:
        self._prepared = hmac.new(check_key(key), digestmod=hashlib.sha256)
        self._known: dict[str, str] = {}
        self._limit = limit

    def __call__(self, fhir_patient_id: str) -> str:
        known = self._known.get(fhir_patient_id)
        if known is None:
            if len(self._known) >= self._limit:
                self._known.clear()
            digest = self._prepared.copy()
            digest.update(fhir_patient_id.encode("utf-8"))
            known = self._known[fhir_patient_id] = digest.hexdigest()
        return known


def pseudonymise(frame: pd.DataFrame, key: str, id_column: str = "patient_id") -> pd.DataFrame:
    """``frame`` with ``id_column`` replaced by ``patient_key`` in first position."""
    keys = list(map(Pseudonyms(key), frame[id_column]))
    return frame.drop(columns=[id_column]).assign(patient_key=keys)[["patient_key", *[c for c in frame.columns if c != id_column]]]
