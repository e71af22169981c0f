"""Small-cell suppression: a count of 1 … threshold-1 patients is withheld (null), and so is a second cell
of any published sum in which it is the only withheld cell, since the sum would give it back
(complementary suppression). Zero is published: "nobody" identifies nobody, unless the caller says
otherwise (``zero_is_small``: for a characteristic's cells, where a 0 beside its group's size says something
about every member of the group).
"""
from __future__ import annotations

from typing import Mapping, Sequence

DEFAULT_THRESHOLD = 5

Relation = tuple[str, Sequence[str]]  # (total, parts): total = sum of parts, all published


def suppress(counts: Mapping[str, int], relations: Sequence[Relation] = (), threshold: int = DEFAULT_THRESHOLD, *,
             zero_is_small: bool = False) -> tuple[dict[str, int | None], dict[str, str]]:
    """The counts with withheld cells as None, and why each was withheld ("small" or "complementary")."""
    if threshold < 1:
        raise ValueError(f"the suppression threshold must be at least 1, not {threshold}")
    for total, parts in relations:
        missing = [c for c in (total, *parts) if c not in counts]
        if missing:
            raise KeyError(f"relation names cells that are not counts: {missing}")
    why = {cell: "small" for cell, n in counts.items() if (0 if zero_is_small else 1) <= n < threshold}
    changed = True
    while changed:
        changed = False
        for total, parts in relations:
            hidden = [c for c in (total, *parts) if c in why]
            if len(hidden) != 1:
                continue
            candidates = [p for p in parts if p not in why] or [total]
            cell = min(candidates, key=lambda c: counts[c])
            why[cell] = "complementary"
            changed = True
    return {cell: None if cell in why else int(n) for cell, n in counts.items()}, why
