"""The serving boundary: batch rows before it, realtime rows from it on (invariant 5).

The batch layer publishes it in one manifest, replaced atomically, at
``<data>/batch/manifest.json``; until the batch has built anything there is no
boundary and the speed layer serves everything it has counted.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from stream_worker.files import read_json


# The speed layer keeps the days it has counted until this long before the boundary, and a
# built day until it has been reconciled; after that it may drop them.
SPEED_RETENTION_GRACE = timedelta(days=1)


def speed_may_drop_before(boundary: datetime) -> date:
    """Reconciled days before this one may be gone from the speed layer."""
    return (boundary - SPEED_RETENTION_GRACE).date()


def manifest_path(data_dir: Path) -> Path:
    return data_dir / "batch" / "manifest.json"


def read_boundary(data_dir: Path) -> datetime | None:
    """The first hour not built by the batch layer, as a naive UTC datetime; None before any build."""
    return boundary_of(read_json(manifest_path(data_dir)))


def boundary_of(manifest: dict | None) -> datetime | None:
    """The boundary a manifest holds, as a naive UTC datetime."""
    if not manifest or not manifest.get("boundary"):
        return None
    boundary = datetime.fromisoformat(manifest["boundary"])
    if boundary.tzinfo is not None:
        boundary = boundary.astimezone(timezone.utc).replace(tzinfo=None)
    return boundary
