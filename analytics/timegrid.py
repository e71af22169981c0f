"""Per-time sums for the survival estimators: the patients' distinct times, and sums of a per-patient quantity at
each time (``at``) or over the patients still at risk there (``at_risk``: time >= s), by ``np.bincount`` and a
reversed cumulative sum. The one way km.py, logrank.py and extras.py turn patients into time steps, in
O(patients + times) instead of a pass over every patient at every time."""
from __future__ import annotations

import numpy as np


class TimeGrid:
    def __init__(self, time) -> None:
        self.times, self.index = np.unique(np.asarray(time, dtype=float), return_inverse=True)  # ascending
        self.index = self.index.reshape(-1)  # each patient's position in ``times``

    def __len__(self) -> int:
        return len(self.times)

    def at(self, values) -> np.ndarray:
        """Sum of ``values`` over the patients whose time is each distinct time."""
        return np.bincount(self.index, np.asarray(values, dtype=float), len(self.times))

    def at_risk(self, values) -> np.ndarray:
        """Sum of ``values`` over the patients at risk at each distinct time (their time is that time or later)."""
        return np.cumsum(self.at(values)[::-1])[::-1]
