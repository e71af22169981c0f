"""The SQL warehouse behind every table this service writes (SQLAlchemy 2; SQLite or PostgreSQL).

``Warehouse`` (``store``) is the object callers hold; the records a load is made of are in
``records``, table definitions in ``schema``, bookkeeping in ``bookkeeping``, derived tables in
``tables``, the ids of a full pass in ``seen_ids``, and the dialect-specific writes in ``writes``.
"""
from etl.records import ApplyResult, QuarantineRow, RawRow, Tombstone, content_hash, is_newer

from .lock import WarehouseBusy
from .schema import PATIENT_XREF, QUARANTINE, raw_table_name
from .seen_ids import SeenIds
from .store import Warehouse, WarehouseWriteError

__all__ = ["ApplyResult", "PATIENT_XREF", "QUARANTINE", "QuarantineRow", "RawRow", "SeenIds", "Tombstone", "Warehouse",
           "WarehouseBusy", "WarehouseWriteError", "content_hash", "is_newer", "raw_table_name"]
