"""Where a topic's speed state lives: ``speed/<topic>``, a link to its live generation, so that a
replay can swap the whole state in one rename."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from lambdaflow.core.layout import GENERATIONS, Layout


class SpeedPaths:
    """Where a topic's speed state lives: ``speed/<topic>``, or a replay's fresh generation."""

    def __init__(self, data_dir: Path, topic: str, root: Path | None = None) -> None:
        layout = Layout(data_dir)
        self.root = root or layout.speed_state(topic)
        self.snapshots = self.root / "snapshots"
        self.temp_dir = layout.temp("speed")

    def live(self) -> SpeedPaths:
        """These paths, with ``speed/<topic>`` created as a link to a first generation when new,
        so that a replay can later swap the whole state in one rename."""
        if not self.root.exists() and not self.root.is_symlink():
            generation = self.root.parent / GENERATIONS / f"{self.root.name}-{uuid.uuid4().hex[:12]}"
            generation.mkdir(parents=True)
            try:
                self.root.symlink_to(os.path.relpath(generation, self.root.parent), target_is_directory=True)
            except FileExistsError:  # another worker made it first
                generation.rmdir()
        return self

    def state_file(self, partition: int) -> Path:
        return self.root / f"partition-{partition}.duckdb"

    def snapshot_file(self, partition: int) -> Path:
        return self.snapshots / f"partition-{partition}.parquet"

    def status_file(self, partition: int) -> Path:
        return self.root / f"status-{partition}.json"
