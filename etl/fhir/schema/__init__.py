"""Validation's fast path: a JSON schema generated from the official FHIR R4 schema and fhir.resources' models
(``generate``), compiled once per process with jsonschema-rs (``runtime``); etl.fhir.validation uses it."""
