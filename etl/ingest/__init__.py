"""Ingestion: FHIR resources from a server or files into the warehouse's raw tables.

``pipeline`` (the validating loader and its worker pool) serves every sync mode; ``report`` ends
every pass the same way; ``rest``, ``bulk``, ``scoped`` (cohort-first) and ``ndjson_dir`` are the
modes, chosen by name through ``modes``.
"""
