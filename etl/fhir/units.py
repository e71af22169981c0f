"""UCUM unit factors that are FHIR knowledge rather than a study's choice.

One table for doses: the plausibility rules refuse a dose whose unit is not here (it cannot be
expressed in mg), and the cohort converts with the same factors, so the two can never disagree.
(``mcg`` is not UCUM but is what hospitals write for micrograms.)
"""
from __future__ import annotations

MASS_TO_MG: dict[str, float] = {"kg": 1e6, "g": 1e3, "mg": 1.0, "ug": 1e-3, "mcg": 1e-3, "ng": 1e-6}
