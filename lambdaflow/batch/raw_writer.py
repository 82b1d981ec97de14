"""The raw store's writing side, the archiver's alone: manifests, the partition lock, and the
clean-up of files a crashed batch left. Readers use :class:`lambdaflow.core.raw_store.RawStore`."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from lambdaflow.core.files import replace_json
from lambdaflow.core.raw_store import BatchRange, Manifest, RawStore

log = logging.getLogger(__name__)


class RawStoreWriter(RawStore):
    def write_manifest(self, manifest: Manifest) -> None:
        replace_json(self.manifest_path(manifest.partition), asdict(manifest))

    @contextmanager
    def partition_lock(self, partition: int) -> Iterator[None]:
        """Held while a batch is checked against the manifest and published."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / f"partition-{partition}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remove_uncovered(self, partition: int) -> list[Path]:
        """Delete this partition's files that no manifest covers, and its stale temporary files.

        Call only while owning the partition, under its lock.
        """
        manifest = self.read_manifest(partition)
        removed = []
        for folder in (self.events_dir, self.dead_letter_dir):
            for path in folder.glob("*/*.parquet"):
                batch = BatchRange.parse(path.name)
                if batch and batch.topic == self.topic and batch.partition == partition and not manifest.covers(batch):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        prefix = f"{self.topic}-"
        for path in self.temp_dir.glob(f"{prefix}*.tmp"):
            batch = BatchRange.parse(path.name.rsplit(".", 2)[0])
            if batch and batch.topic == self.topic and batch.partition == partition:
                path.unlink(missing_ok=True)
                removed.append(path)
        for path in removed:
            log.warning("%s[%d] removed %s, left by a batch that was never committed", self.topic, partition, path)
        return removed
