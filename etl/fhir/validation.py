"""Validate FHIR R4 resources with fhir.resources' R4B models, one resource at a time.

R4B equals R4 for every resource type the study reads; the package's default import is R5,
which would reject valid R4 content. fhir.resources has no lenient mode, so a failure here
sends the resource to quarantine with every error, instead of failing the whole pull.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from etl.fhir.schema.runtime import json_type_errors, schema_accepts

from .references import ID


@lru_cache(maxsize=None)
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


BOOLEAN_ELEMENTS = {"active"}


def _json_primitive_errors(node: Any, path: str = "") -> list[str]:
    """fhir.resources coerces JSON strings to booleans and integers ("yes" -> True, "3" -> 3); FHIR JSON
    does not allow that, and a coerced "no" would be read as True. Checked here for every choice-type
    ``*Boolean``/``*Integer`` element and ``active``."""
    errors: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            if (key.endswith("Boolean") or key in BOOLEAN_ELEMENTS) and not isinstance(value, bool):
                errors.append(f"{here}: {value!r} is not a JSON boolean")
            elif key.endswith("Integer") and (isinstance(value, bool) or not isinstance(value, int)):
                errors.append(f"{here}: {value!r} is not a JSON integer")
            else:
                errors.extend(_json_primitive_errors(value, here))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            errors.extend(_json_primitive_errors(item, f"{path}[{i}]"))
    return errors


# The JSON-primitive walk only reports keys ending in these; when the raw line has none of them
# (nor a \u escape that could spell one) the walk is skipped. It cost 8% of validation's time.
_PRIMITIVE_MARKERS = (b'Boolean"', b'Integer"', b'"active"', b"\\u")


def validation_errors(resource: Any, expected_type: str, text: bytes | None = None) -> list[str]:
    """Return every reason ``resource`` is not a valid R4 ``expected_type``; empty when valid.
    ``text``, the JSON the resource was parsed from, lets a resource without boolean or integer
    elements skip the JSON-primitive walk.

    The generated JSON schema decides first (etl.fhir.schema, ~20x cheaper): what it accepts, fhir.resources
    accepts. Only what it refuses is checked with fhir.resources, for the same messages as ever; when
    fhir.resources accepts it, a JSON value of the wrong type (which fhir.resources coerces) is still a reason."""
    errors = _envelope_errors(resource, expected_type)
    if errors or schema_accepts(resource, expected_type, text):
        return errors
    return _model_errors(resource, expected_type, text) or json_type_errors(resource, expected_type)


def fhir_resources_errors(resource: Any, expected_type: str, text: bytes | None = None) -> list[str]:
    """The check without the schema (every resource went through it before): the reference that the
    differential test and benchmarks/validation.py hold the schema path against."""
    return _envelope_errors(resource, expected_type) or _model_errors(resource, expected_type, text)


def _envelope_errors(resource: Any, expected_type: str) -> list[str]:
    if not isinstance(resource, dict):
        return [f"not a JSON object: {type(resource).__name__}"]
    actual = resource.get("resourceType")
    if actual != expected_type:
        return [f"resourceType is {actual!r}, expected {expected_type!r}"]
    if not resource.get("id"):
        return ["resource has no id"]
    if not isinstance(resource["id"], str) or not ID.fullmatch(resource["id"]):
        return ["id is not a FHIR R4 id (1 to 64 of A-Z, a-z, 0-9, '-' and '.')"]
    return []


def _model_errors(resource: dict[str, Any], expected_type: str, text: bytes | None) -> list[str]:
    """fhir.resources' verdict and the JSON-primitive walk: the check every resource went through before the schema."""
    try:
        _model(expected_type).model_validate(resource)
    except ValidationError as exc:
        return [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
    except (ValueError, TypeError) as exc:  # model-level validators raise these too
        return [str(exc)]
    except (KeyError, AttributeError) as exc:
        # fhir.resources 8.3 crashes on some malformed input ("_x" holding a string that parses as JSON
        # to a non-object; a contained resource of no FHIR type): a reason, not a crashed sync
        return [f"not a readable FHIR R4 resource (fhir.resources failed: {type(exc).__name__} {exc})"]
    if text is not None and not any(marker in text for marker in _PRIMITIVE_MARKERS):
        return []
    return _json_primitive_errors(resource)
