"""Study-agnostic FHIR R4: the REST and Bulk clients, auth, validation and plausibility, references,
NDJSON framing, and what the service knows about each resource type (``types``) and how it flattens."""
