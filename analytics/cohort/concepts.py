"""The concept map: which (system, code) pairs carry each clinical fact of the study.

The default lives in ``concept_map.yaml`` beside this file and is exactly the data contract's code
lists. A hospital points ``CONCEPT_MAP_PATH`` at a file of its own, in the same format: its codes
are added to the default's (a new concept name is added whole), unless the file says
``replace_defaults: true``, when it is the whole map. Matching is on (system, code) only;
ICD-10-CM codes are compared without their dot.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DEFAULT_CONCEPT_MAP = Path(__file__).with_name("concept_map.yaml")
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
DOMAINS = ("conditions", "medications", "procedures", "observations", "adverse_event_categories",
           "observation_values", "adverse_event_seriousness", "condition_verification", "medication_status_reasons")
Codings = tuple[tuple[str | None, str | None], ...]


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
    ingredient: str | None = None  # glucocorticoids: which drug (codes of one drug in two systems share it)

    def ingredient_of(self, system: str | None, code: str | None) -> str:
        return self.ingredient or f"{system}|{_norm(system, code)}"

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
    # (domain, system, code) -> matches, filled as codings are met: the cohort step meets the same few hundred
    # codings in every chunk of patients, and walking every rule for each was a tenth of building the facts.
    _matches: dict[tuple[str, str | None, str | None], tuple[tuple[str, CodeRule], ...]] = field(
        default_factory=dict, init=False, compare=False, repr=False)
    # (domain, system) -> that system's (concept, rule) pairs, in the map's order: a hospital's local codes (a new
    # code in every few resources) miss the cache above, and each miss walked every rule of the domain.
    _by_system: dict[tuple[str, str | None], tuple[tuple[str, CodeRule], ...]] = field(
        default_factory=dict, init=False, compare=False, repr=False)

    def matching_rules(self, domain: str, system: str | None, code: str | None) -> tuple[tuple[str, CodeRule], ...]:
        """(concept, rule) for every rule of ``domain`` that the coding matches: the one matching loop."""
        key = (domain, system, code)
        found = self._matches.get(key)
        if found is None:
            rules = self._by_system.get((domain, system))
            if rules is None:
                rules = self._by_system[(domain, system)] = tuple(
                    (name, rule) for name, of in self.domains[domain].items() for rule in of if rule.system == system)
            found = self._matches[key] = tuple((name, rule) for name, rule in rules if rule.matches(system, code))
        return found

    def concepts(self, domain: str, system: str | None, code: str | None) -> list[tuple[str, float | None]]:
        return [(name, rule.factor) for name, rule in self.matching_rules(domain, system, code)]

    def concepts_of(self, domain: str, codings: Codings | None) -> frozenset[str]:
        """Every concept that any of ``codings`` carries: a set, so coding order and extra systems cannot matter."""
        return frozenset(name for system, code in codings or () for name, _ in self.concepts(domain, system, code))

    def annotate(self, domain: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows of ``frame`` whose (system, code) carries a concept, with ``concept``, ``factor`` and
        ``ingredient`` added.

        A coding that matches two concepts (M33.11 is both dermatomyositis and ILD) yields two rows.
        """
        pairs = frame[["system", "code"]].drop_duplicates()
        matched = [{"system": s, "code": c, "concept": name, "factor": rule.factor, "ingredient": rule.ingredient_of(s, c)}
                   for s, c in pairs.itertuples(index=False) for name, rule in self.matching_rules(domain, s, c)]
        lookup = pd.DataFrame(matched, columns=["system", "code", "concept", "factor", "ingredient"])
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


class _Located(dict):
    """A YAML mapping that remembers the line it started on, for error messages."""

    line: int = 0


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_located(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Located:
    mapping = _Located(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_located)


def _where(source: str, obj: Any, fallback: Any = None) -> str:
    line = getattr(obj, "line", 0) or getattr(fallback, "line", 0)
    return f"{source}:{line}" if line else source


def _parse(data: Any, source: str, known_systems: dict[str, str] | None = None) -> ConceptMap:
    if not isinstance(data, dict):
        raise ConceptMapError(f"{source}: expected a mapping at the top level")
    systems = {**(known_systems or {}), **(data.get("systems") or {})}
    domains: dict[str, dict[str, tuple[CodeRule, ...]]] = {}
    for domain in DOMAINS:
        entries = data.get(domain) or {}
        if not isinstance(entries, dict):
            raise ConceptMapError(f"{_where(source, data)}: '{domain}' must map concept names to lists of codes")
        concepts: dict[str, tuple[CodeRule, ...]] = {}
        for name, rules in entries.items():
            if not isinstance(rules, list) or not rules:
                raise ConceptMapError(f"{_where(source, entries)}: {domain}.{name} must be a non-empty list of codes")
            parsed = []
            for i, rule in enumerate(rules):
                where = f"{_where(source, rule, entries)}: {domain}.{name}[{i}]"
                if not isinstance(rule, dict) or "system" not in rule or ("code" in rule) == ("prefix" in rule):
                    raise ConceptMapError(f"{where} needs a system and exactly one of code or prefix, got {rule!r}")
                system = systems.get(rule["system"], rule["system"])
                if not str(system).startswith(("http://", "https://", "urn:")):
                    raise ConceptMapError(f"{where}: system {rule['system']!r} is neither a URI nor a name under 'systems'")
                if domain == "medications" and name == "glucocorticoid" and rule.get("factor") is None:
                    raise ConceptMapError(f"{where}: a glucocorticoid code needs its prednisolone-equivalent factor")
                parsed.append(CodeRule(system=system, code=None if rule.get("code") is None else str(rule["code"]),
                                       prefix=None if rule.get("prefix") is None else str(rule["prefix"]),
                                       factor=None if rule.get("factor") is None else float(rule["factor"]),
                                       ingredient=None if rule.get("ingredient") is None else str(rule["ingredient"])))
            concepts[str(name)] = tuple(parsed)
        domains[domain] = concepts
    units = {}
    for k, v in (data.get("units") or {}).items():
        if not isinstance(v, dict) or "canonical" not in v or not isinstance(v.get("convert"), dict):
            raise ConceptMapError(f"{_where(source, v, data.get('units'))}: units.{k} needs 'canonical' and a 'convert' mapping")
        units[str(k)] = UnitRule(canonical=str(v["canonical"]), convert={str(u): float(f) for u, f in v["convert"].items()})
    return ConceptMap(domains=domains, units=units, digest="")


MAX_MAP_BYTES = 1024 * 1024  # a concept map is a few kilobytes; a bigger file is a mistake or an attack


def _read(file: Path) -> tuple[str, Any]:
    """Parse a concept-map file. Anchors and aliases are refused before the file is composed: YAML's
    aliases let a few hundred bytes expand to billions of nodes (the "billion laughs"), and a code list
    never needs them."""
    if file.stat().st_size > MAX_MAP_BYTES:
        raise ConceptMapError(f"{file}: {file.stat().st_size} bytes is too large for a concept map (limit {MAX_MAP_BYTES})")
    text = file.read_text(encoding="utf-8")
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                line = token.start_mark.line + 1
                raise ConceptMapError(f"{file}:{line}: YAML anchors and aliases are not allowed in a concept map")
        return text, yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConceptMapError(f"{file}: not valid YAML: {exc}") from None


def _merge(default: ConceptMap, extra: ConceptMap) -> ConceptMap:
    domains = {d: {**default.domains[d]} for d in DOMAINS}
    for d in DOMAINS:
        for name, rules in extra.domains[d].items():
            domains[d][name] = domains[d].get(name, ()) + rules
    units = {**default.units}
    for name, rule in extra.units.items():
        base = units.get(name)
        units[name] = rule if base is None else UnitRule(base.canonical, {**base.convert, **rule.convert})
    return ConceptMap(domains, units, "")


@lru_cache(maxsize=8)
def load_concept_map(path: str | None = None) -> ConceptMap:
    """Load and validate the concept map: the contract's default, plus a hospital's file at ``path``."""
    default_text, default_data = _read(DEFAULT_CONCEPT_MAP)
    parsed = _parse(default_data, str(DEFAULT_CONCEPT_MAP))
    digest = hashlib.sha256(default_text.encode())
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConceptMapError(f"concept map {file} does not exist (CONCEPT_MAP_PATH)")
        text, data = _read(file)
        extra = _parse(data, str(file), known_systems=default_data.get("systems"))
        parsed = extra if isinstance(data, dict) and data.get("replace_defaults") else _merge(parsed, extra)
        digest.update(text.encode())
    return ConceptMap(parsed.domains, parsed.units, digest.hexdigest())
