"""The speed layer's published files as every host finds them: each partition's snapshot, and the
progress report of the worker that counts it.

On a local storage they stay under the data directory, in ``speed/<topic>/`` (a link to the live
generation, see ``stream_worker.paths``). On an S3 storage they live beside the tables, so a
server on another host reads them::

    speed/<topic>/live.json                              {"generation": G}: the one readers read
    speed/<topic>/generations/G/partition-<p>.parquet    a partition's snapshot, replaced by one PUT
    speed/<topic>/status-<p>.json                        the progress report of its worker

A replay counts into a new generation and makes it the live one with one PUT of ``live.json``;
the generation before stays until the next replay, for the queries that listed it.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lambdaflow.core.files import PROGRESS_ONLY, read_json, replace_json
from lambdaflow.core.layout import Layout
from lambdaflow.core.storage import Storage, file_name

log = logging.getLogger(__name__)

SNAPSHOT_GLOB = "partition-*.parquet"


@dataclass(frozen=True)
class SpeedFiles:
    data_dir: Path
    topic: str
    storage: Storage

    @property
    def on_store(self) -> bool:
        return self.storage.is_s3

    @property
    def _root(self) -> str:
        return self.storage.table_uri("speed", self.topic)

    # The live generation (S3)

    def live_generation(self) -> str | None:
        """The generation readers read; None before any worker published."""
        document = self.storage.read_json(f"{self._root}/live.json", "delete it; the stream worker writes it again")
        return document.get("generation") if isinstance(document, dict) else None

    def adopt_generation(self, proposed: str) -> str:
        """The live generation, made ``proposed`` when there is none yet (a first worker)."""
        live = self.live_generation()
        if live is None:
            self.storage.write_json(f"{self._root}/live.json", {"generation": proposed})
            live = self.live_generation() or proposed
        return live

    def switch_to(self, generation: str) -> None:
        """Make ``generation`` the live one; remove the generations before the one it replaces."""
        previous = self.live_generation()
        self.storage.write_json(f"{self._root}/live.json", {"generation": generation})
        filesystem = self.storage.filesystem()
        for name in self.storage.list_names(f"{self._root}/generations"):
            if name not in (generation, previous):
                filesystem.rm(f"{self._root}/generations/{name}", recursive=True)

    def snapshot_uri(self, generation: str, partition: int) -> str:
        return f"{self._root}/generations/{generation}/partition-{partition}.parquet"

    # Snapshots

    def put_snapshot(self, generation: str, partition: int, frame: object) -> None:
        """Replace a partition's snapshot on the store (``frame``: a Polars frame) with one PUT."""
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="zstd")  # type: ignore[attr-defined]
        self.storage.filesystem().pipe_file(self.snapshot_uri(generation, partition), buffer.getvalue())

    def snapshots(self) -> list[str]:
        """The live snapshots' paths (local) or URIs (S3), in partition order."""
        if not self.on_store:
            return [str(path) for path in sorted(Layout(self.data_dir).speed_snapshots(self.topic).glob(SNAPSHOT_GLOB))]
        generation = self.live_generation()
        if generation is None:
            return []
        folder = f"{self._root}/generations/{generation}"
        return [f"{folder}/{name}" for name in sorted(self.storage.list_names(folder)) if name.endswith(".parquet")]

    def snapshot_ages(self) -> dict[str, float]:
        """Seconds since each live snapshot was replaced, by partition (as text)."""
        now = time.time()
        ages = {}
        if self.on_store:
            generation = self.live_generation()
            folder = f"{self._root}/generations/{generation}"
            listed = self.storage.filesystem().ls(folder, detail=True, refresh=True) if generation else []
            for entry in listed:
                modified = entry.get("LastModified")
                if modified is not None and file_name(entry["name"]).endswith(".parquet"):
                    ages[_partition_of(entry["name"])] = max(0.0, now - modified.timestamp())
            return ages
        for path in sorted(Layout(self.data_dir).speed_snapshots(self.topic).glob(SNAPSHOT_GLOB)):
            try:
                ages[_partition_of(path.name)] = max(0.0, now - path.stat().st_mtime)
            except FileNotFoundError:  # replaced between the listing and the look
                continue
        return ages

    # Progress reports

    def _status_local(self, partition: int) -> Path:
        return Layout(self.data_dir).speed_state(self.topic) / f"status-{partition}.json"

    def read_status(self, partition: int) -> dict | None:
        if self.on_store:
            return self.storage.read_json(f"{self._root}/status-{partition}.json", PROGRESS_ONLY)
        return read_json(self._status_local(partition), PROGRESS_ONLY)

    def write_status(self, partition: int, document: dict, local: Path) -> None:
        """Replace a partition's progress report: at ``local`` (a local storage), or on the store. A
        PUT the store refuses is logged, not raised: the next report replaces it within a second."""
        if not self.on_store:
            replace_json(local, document, durable=False)  # progress only: no fsync in the counting path
            return
        try:
            self.storage.write_json(f"{self._root}/status-{partition}.json", document)
        except OSError as error:
            log.warning("%s[%d] progress report not written: %s", self.topic, partition, error)

    def statuses(self) -> dict[int, dict]:
        """Every partition's progress report, by partition."""
        if self.on_store:
            names = self.storage.list_names(self._root)
            partitions = [int(_partition_of(name)) for name in names if _is_status(name)]
        else:
            folder = Layout(self.data_dir).speed_state(self.topic)
            partitions = [int(_partition_of(path.name)) for path in folder.glob("status-*.json")]
        found = {}
        for partition in sorted(partitions):
            document = self.read_status(partition)
            if document:
                found[partition] = document
        return found


def _partition_of(name: str) -> str:
    return file_name(name).split("-", 1)[1].split(".", 1)[0]


def _is_status(name: str) -> bool:
    return name.startswith("status-") and name.endswith(".json") and _partition_of(name).isdigit()
