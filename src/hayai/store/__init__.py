"""hayai's SQLite store: run history, cached file hashes, model catalog registrations,
speed levers as measured here.

`Store` is the one entry point; the schema lives in `migrations.py` (append-only).
"""

from __future__ import annotations

from .catalog_entries import CATALOG_KINDS, CatalogEntry
from .db import Store
from .history import FINISHED_STATUSES, RUN_KINDS, RUN_STATUSES, Run, history_tsv
from .migrations import SCHEMA_VERSION
from .speed_measurements import SpeedMeasurement

__all__ = [
    "Store",
    "Run",
    "CatalogEntry",
    "SpeedMeasurement",
    "history_tsv",
    "RUN_KINDS",
    "RUN_STATUSES",
    "FINISHED_STATUSES",
    "CATALOG_KINDS",
    "SCHEMA_VERSION",
]
