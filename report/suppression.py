"""Small-cell suppression for counts in tables that leave the hospital.

A count of 1 … threshold−1 patients can identify people, so it is shown as "<threshold" (primary
suppression). Hiding one cell is not enough when the cells of a partition add up to a total that is
shown: the hidden cell is the total minus the others. So when exactly one cell of a partition is
hidden, the smallest other cell is hidden as well (secondary suppression). "k of n" (patients with an
event out of a group) is the partition [k, n−k]: a small n−k hides k too, since k would reveal it.
0 is shown: it identifies nobody. Written here rather than taken from a library because the rule is
this short and must be stated in the report exactly as applied (sdcMicro and friends are R-only or
much larger than the rule). A median, mean or percentage of fewer patients than the threshold is hidden
too (a median of two patients is their values).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence

DEFAULT_THRESHOLD = 5


class Mark(str, Enum):
    PRIMARY = "primary"      # the count itself is small
    SECONDARY = "secondary"  # hidden so that a small count elsewhere cannot be recovered
    SMALL_GROUP = "small_group"  # a statistic (median, mean, share) of a group smaller than the threshold


@dataclass(frozen=True)
class SmallCellPolicy:
    threshold: int = DEFAULT_THRESHOLD  # 0 or 1 switches suppression off

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"the small-cell threshold must be 0 or more, not {self.threshold}")

    @property
    def active(self) -> bool:
        return self.threshold > 1

    def small(self, count: int) -> bool:
        return 0 < count < self.threshold

    def label(self, mark: Mark) -> str:
        return {Mark.PRIMARY: f"<{self.threshold}", Mark.SECONDARY: "*", Mark.SMALL_GROUP: f"n<{self.threshold}"}[mark]

    def count(self, count: int) -> Mark | None:
        return Mark.PRIMARY if self.small(int(count)) else None

    def partition(self, shown: Sequence[int], hidden_remainder: int | None = None) -> list[Mark | None]:
        """Marks for the shown cells of a partition whose total is shown too. ``hidden_remainder`` is a part
        that is not displayed but follows from the total (patients without the event, missing values)."""
        parts = [int(c) for c in shown]
        marks: list[Mark | None] = [Mark.PRIMARY if self.small(c) else None for c in parts]
        hidden = sum(m is not None for m in marks) + (hidden_remainder is not None and self.small(hidden_remainder))
        if hidden == 1:
            candidates = [i for i, m in enumerate(marks) if m is None]
            if candidates:
                marks[min(candidates, key=lambda i: parts[i])] = Mark.SECONDARY
        return marks
