"""Storage: the single place in scaletui that speaks SQL.

One SQLite file (WAL) holds experiments, runs, per-step metrics, per-layer
statistics and events. `Store` (the runner) and `StoreSink` (one per worker
process) write it; `Reader` (the app, the CLI) only reads it. The schema and
its views are documented in `scaletui.store.schema`, value conventions (NaN,
Inf, timestamps) in `scaletui.store.codec`.

Imports only the standard library, sqlite-utils and scaletui.core.
"""

from scaletui.store.errors import (
    DatabaseNotReady,
    NotAScaletuiDatabase,
    SchemaTooNew,
    SchemaTooOld,
    StoreBusy,
    StoreError,
    UnknownRun,
)
from scaletui.store.reader import Reader
from scaletui.store.schema import SCHEMA_VERSION, open_db
from scaletui.store.writer import Store, StoreSink, default_host

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseNotReady",
    "NotAScaletuiDatabase",
    "Reader",
    "SchemaTooNew",
    "SchemaTooOld",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreSink",
    "UnknownRun",
    "default_host",
    "open_db",
]
