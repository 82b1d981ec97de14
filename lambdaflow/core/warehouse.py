"""The dbt warehouse's one-writer rule: every process that opens it for writing holds this lock.

DuckDB allows one writing process per file. The Airflow pool serialises
scheduled builds; this file lock also covers in-process runs (`lambdaflow
batch`, the demo) and `dbt docs generate`.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lambdaflow.core.config import Settings


@contextmanager
def warehouse_lock(settings: Settings) -> Iterator[Path]:
    """Hold the warehouse's write lock; yields the warehouse file's path."""
    warehouse = settings.layout.warehouse
    warehouse.mkdir(parents=True, exist_ok=True)
    with (warehouse / "write.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield warehouse / "lambdaflow.duckdb"
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
