"""Small-cell suppression: a count of 1 … threshold-1 patients is withheld (null), and so is a second cell
of any published sum in which it is the only withheld cell, since the sum would give it back
(complementary suppression). Zero is published: "nobody" identifies nobody, unless the caller says
otherwise (``zero_is_small``: for a characteristic's cells, where a 0 beside its group's size says something
about every member of the group).

The complementary cell is the smallest part of the sum that is at least the threshold: a zero (or any cell
under the threshold that is published) hides nothing when withheld, since the reader knows or can bound it,
and would leave the small cell recoverable. If no part qualifies, the total is withheld instead. The
result does not say which cells were small and which complementary: that label would point at the small ones.
"""
from __future__ import annotations

from typing import Mapping, Sequence

DEFAULT_THRESHOLD = 5

Relation = tuple[str, Sequence[str]]  # (total, parts): total = sum of parts, all published


def is_small(n: int, threshold: int = DEFAULT_THRESHOLD, *, zero_is_small: bool = False) -> bool:
    """The one rule for a count that identifies patients (a cell, an arm's size, an arm's survivors)."""
    return (0 if zero_is_small else 1) <= n < threshold


def suppress(counts: Mapping[str, int], relations: Sequence[Relation] = (), threshold: int = DEFAULT_THRESHOLD, *,
             zero_is_small: bool = False) -> tuple[dict[str, int | None], set[str]]:
    """The counts with withheld cells as None, and the set of withheld cells."""
    if threshold < 1:
        raise ValueError(f"the suppression threshold must be at least 1, not {threshold}")
    for total, parts in relations:
        missing = [c for c in (total, *parts) if c not in counts]
        if missing:
            raise KeyError(f"relation names cells that are not counts: {missing}")
    withheld = {cell for cell, n in counts.items() if is_small(n, threshold, zero_is_small=zero_is_small)}
    changed = True
    while changed:
        changed = False
        for total, parts in relations:
            hidden = [c for c in (total, *parts) if c in withheld]
            if len(hidden) != 1:
                continue
            candidates = [p for p in parts if p not in withheld and counts[p] >= threshold]
            if candidates:
                withheld.add(min(candidates, key=lambda c: (counts[c], c)))
            elif total not in withheld:
                withheld.add(total)
            else:  # the total alone is withheld and every part is published under the threshold: cannot be
                raise ValueError(f"cannot protect {total!r}: its parts are all published and under the threshold")
            changed = True
    return {cell: None if cell in withheld else int(n) for cell, n in counts.items()}, withheld
