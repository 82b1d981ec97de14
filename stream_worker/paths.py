"""Where a topic's speed state lives: ``speed/<topic>``, a link to its live generation, so that a
replay can swap the whole state in one rename; and where its snapshots and progress reports go: beside
the state, or on an S3 storage where every host reads them (lambdaflow.core.speed_files)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from lambdaflow.core.files import fsync_file, temp_path_for
from lambdaflow.core.layout import GENERATIONS, Layout
from lambdaflow.core.speed_files import SpeedFiles
from lambdaflow.core.storage import Storage

if TYPE_CHECKING:
    import polars as pl


class SpeedPaths:
    """Where a topic's speed state lives: ``speed/<topic>``, or a replay's fresh generation."""

    def __init__(self, data_dir: Path, topic: str, root: Path | None = None, storage: Storage | None = None) -> None:
        layout = Layout(data_dir)
        self.root = root or layout.speed_state(topic)
        self.snapshots = self.root / "snapshots"
        self.temp_dir = layout.temp("speed")
        self.files = SpeedFiles(data_dir, topic, storage or Storage.from_env(os.environ, data_dir))
        self.generation = self.root.name if root is not None else None
        """The generation the snapshots go to on an S3 storage (the live one's is read in live())."""

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
        if self.files.on_store:  # the store's live generation, whichever host named it first
            self.generation = self.files.adopt_generation(self.root.resolve().name)
        return self

    def publish_snapshot(self, partition: int, snapshot: pl.DataFrame) -> None:
        """Replace the partition's snapshot: a file renamed into place, or one PUT on the store."""
        if self.files.on_store:
            assert self.generation is not None, "live() names the generation first"
            self.files.put_snapshot(self.generation, partition, snapshot)
            return
        final = self.snapshot_file(partition)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path_for(final, self.temp_dir)
        snapshot.write_parquet(temp, compression="zstd")
        fsync_file(temp)
        os.replace(temp, final)

    def write_status(self, partition: int, document: dict) -> None:
        self.files.write_status(partition, document, self.status_file(partition))

    def state_file(self, partition: int) -> Path:
        return self.root / f"partition-{partition}.duckdb"

    def snapshot_file(self, partition: int) -> Path:
        return self.snapshots / f"partition-{partition}.parquet"

    def status_file(self, partition: int) -> Path:
        return self.root / f"status-{partition}.json"
