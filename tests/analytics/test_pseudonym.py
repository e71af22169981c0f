"""Pseudonyms are keyed HMAC-SHA256 (analytics.pseudonym)."""
from __future__ import annotations

import pandas as pd
import pytest

from analytics.pseudonym import PseudonymKeyError, Pseudonyms, patient_key, pseudonymise


def test_hmac_sha256_known_answer_rfc4231_case_1():
    assert patient_key("Hi There", "\x0b" * 20) == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"


def test_keys_differ_by_secret_and_no_fhir_id_survives():
    frame = pd.DataFrame({"patient_id": ["p1", "p2"], "x": [1, 2]})
    a, b = pseudonymise(frame, "k" * 16), pseudonymise(frame, "j" * 16)
    assert list(a.columns) == ["patient_key", "x"]
    assert set(a["patient_key"]).isdisjoint(b["patient_key"])


def test_a_missing_or_short_key_is_a_clear_error():
    with pytest.raises(PseudonymKeyError, match="PSEUDONYM_KEY"):
        patient_key("p1", "short")


def test_many_ids_get_the_same_keys_as_one_at_a_time_even_past_the_memory_limit():
    pseudonyms = Pseudonyms("\x0b" * 20, limit=2)
    ids = ["Hi There", "p1", "p2", "p1", "Hi There", "p3"]
    assert [pseudonyms(i) for i in ids] == [patient_key(i, "\x0b" * 20) for i in ids]
    assert pseudonyms("Hi There") == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    assert len(pseudonyms._known) <= 2
    with pytest.raises(PseudonymKeyError, match="PSEUDONYM_KEY"):
        Pseudonyms("short")
