"""One byte representation of a JSON document, so that a signature made by one program verifies in another.

Keys sorted, no insignificant whitespace, UTF-8, and no NaN or Infinity (not JSON: a missing number is null).
Python's float repr round-trips exactly, so parsing and re-serialising a document gives the same bytes.
"""
from __future__ import annotations

import json
from typing import Any


def canonical_bytes(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def parse(data: bytes | str) -> Any:
    """Strict JSON: NaN/Infinity tokens and duplicate keys are errors (a duplicate key could hide a value)."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate key in JSON object: {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
        return dict(pairs)

    def no_constant(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(data, object_pairs_hook=no_duplicates, parse_constant=no_constant)
