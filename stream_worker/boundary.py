"""The serving boundary: batch rows before it, realtime rows from it on (invariant 5).

The batch layer publishes it in one manifest, replaced atomically, at
``<data>/batch/manifest.json``; until the batch has built anything there is no
boundary and the speed layer serves everything it has counted.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from stream_worker.files import read_json


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
