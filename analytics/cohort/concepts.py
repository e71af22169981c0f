"""The concept map: which (system, code) pairs carry each clinical fact of the study.

The default lives in ``concept_map.yaml`` beside this file and is exactly the data contract's code
lists; a hospital points ``CONCEPT_MAP_PATH`` at its own copy to add local codings, with no code
change. Matching is on (system, code) only; ICD-10-CM codes are compared without their dot.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DEFAULT_CONCEPT_MAP = Path(__file__).with_name("concept_map.yaml")
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
DOMAINS = ("conditions", "medications", "procedures", "observations", "adverse_event_categories")


class ConceptMapError(ValueError):
    """The concept map file is malformed; the message names the entry."""


def _norm(system: str | None, code: str | None) -> str | None:
    if code is None:
        return None
    return code.replace(".", "").upper() if system == ICD10 else code


@dataclass(frozen=True)
class CodeRule:
    system: str
    code: str | None = None
    prefix: str | None = None
    factor: float | None = None

    def matches(self, system: str | None, code: str | None) -> bool:
        if system != self.system or code is None:
            return False
        if self.code is not None:
            return _norm(system, code) == _norm(system, self.code)
        return str(_norm(system, code)).startswith(str(_norm(system, self.prefix)))


@dataclass(frozen=True)
class UnitRule:
    canonical: str
    convert: dict[str, float]


@dataclass(frozen=True)
class ConceptMap:
    domains: dict[str, dict[str, tuple[CodeRule, ...]]]
    units: dict[str, UnitRule]
    digest: str

    def concepts(self, domain: str, system: str | None, code: str | None) -> list[tuple[str, float | None]]:
        return [(name, rule.factor) for name, rules in self.domains[domain].items()
                for rule in rules if rule.matches(system, code)]

    def annotate(self, domain: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows of ``frame`` whose (system, code) carries a concept, with ``concept`` and ``factor`` added.

        A coding that matches two concepts (M33.11 is both dermatomyositis and ILD) yields two rows.
        """
        pairs = frame[["system", "code"]].drop_duplicates()
        matched = [{"system": s, "code": c, "concept": name, "factor": factor}
                   for s, c in pairs.itertuples(index=False) for name, factor in self.concepts(domain, s, c)]
        lookup = pd.DataFrame(matched, columns=["system", "code", "concept", "factor"])
        return frame.merge(lookup, on=["system", "code"], how="inner")

    def to_canonical(self, concept: str, value: float | None, unit: str | None) -> float | None:
        """A quantity in the concept's canonical unit, or None when the unit is unknown."""
        rule = self.units.get(concept)
        if value is None or pd.isna(value):
            return None
        if rule is None:
            return float(value)
        factor = rule.convert.get(unit or rule.canonical)
        return None if factor is None else float(value) * factor


def _parse(data: Any, source: str) -> ConceptMap:
    if not isinstance(data, dict):
        raise ConceptMapError(f"{source}: expected a mapping at the top level")
    systems = data.get("systems") or {}
    domains: dict[str, dict[str, tuple[CodeRule, ...]]] = {}
    for domain in DOMAINS:
        entries = data.get(domain) or {}
        if not isinstance(entries, dict):
            raise ConceptMapError(f"{source}: '{domain}' must map concept names to lists of codes")
        concepts: dict[str, tuple[CodeRule, ...]] = {}
        for name, rules in entries.items():
            if not isinstance(rules, list) or not rules:
                raise ConceptMapError(f"{source}: {domain}.{name} must be a non-empty list of codes")
            parsed = []
            for i, rule in enumerate(rules):
                where = f"{source}: {domain}.{name}[{i}]"
                if not isinstance(rule, dict) or "system" not in rule or ("code" in rule) == ("prefix" in rule):
                    raise ConceptMapError(f"{where} needs a system and exactly one of code or prefix, got {rule!r}")
                system = systems.get(rule["system"], rule["system"])
                if not str(system).startswith(("http://", "https://", "urn:")):
                    raise ConceptMapError(f"{where}: system {rule['system']!r} is neither a URI nor a name under 'systems'")
                parsed.append(CodeRule(system=system, code=None if rule.get("code") is None else str(rule["code"]),
                                       prefix=None if rule.get("prefix") is None else str(rule["prefix"]),
                                       factor=None if rule.get("factor") is None else float(rule["factor"])))
            concepts[str(name)] = tuple(parsed)
        domains[domain] = concepts
    units = {str(k): UnitRule(canonical=v["canonical"], convert={str(u): float(f) for u, f in v["convert"].items()})
             for k, v in (data.get("units") or {}).items()}
    return ConceptMap(domains=domains, units=units, digest="")


@lru_cache(maxsize=8)
def load_concept_map(path: str | None = None) -> ConceptMap:
    """Load and validate a concept map (the contract's default when ``path`` is None)."""
    file = Path(path) if path else DEFAULT_CONCEPT_MAP
    text = file.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConceptMapError(f"{file}: not valid YAML: {exc}") from None
    parsed = _parse(data, str(file))
    return ConceptMap(parsed.domains, parsed.units, hashlib.sha256(text.encode()).hexdigest())
