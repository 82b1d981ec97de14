"""The append-only raw store: where files go, what they are called, which ones count.

Layout under the data directory::

    raw/events/event_date=YYYY-MM-DD/<topic>-<epoch>-<partition>-<first>-<last>.parquet
    dead_letter/ingest_date=YYYY-MM-DD/<topic>-<epoch>-<partition>-<first>-<last>.parquet
    archiver/<topic>/partition-<p>.json    the manifest: the only resume point
    archiver/<topic>/status-<p>.json       progress, for completeness checks and status
    tmp/archiver/                          files being written

A batch of offsets ``first..last`` yields one file per event date it touches,
plus one dead-letter file if it held rejects, all named by the batch's range.
A file counts once the partition's manifest covers its range. Files that a
crash left uncovered are ignored by readers (:meth:`RawStore.files_for_date`)
and removed by the archiver when it next takes the partition.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

from lambdaflow.core.boundary import log_id
from lambdaflow.core.errors import InputError, first_line
from lambdaflow.core.files import PROGRESS_ONLY, DamagedFile, read_json
from lambdaflow.core.layout import Layout

log = logging.getLogger(__name__)

RESTORE = "restore it from a backup (a published raw file is never changed or removed)"
MANIFEST_LOST = (
    "restore it from a backup: it is what says which raw files count and where the partition "
    "resumes, and the archiver will not guess"
)


class RawFileDamaged(InputError):
    """A published raw file is gone, changed or unreadable: nothing built from it would be right."""


def require_readable(path: Path) -> None:
    """Refuse a raw file that is not a whole Parquet file with the event columns (reads its footer only)."""
    import polars as pl

    from lambdaflow.core.contract import EVENT_SCHEMA

    try:
        columns = pl.read_parquet_schema(path)
    except FileNotFoundError:
        raise RawFileDamaged(f"raw file {path} is missing: {RESTORE}") from None
    except (OSError, pl.exceptions.PolarsError) as error:
        reason = first_line(error)
        raise RawFileDamaged(f"raw file {path} is not a readable Parquet file ({reason}): {RESTORE}") from None
    missing = [name for name in EVENT_SCHEMA if name != "event_date" and name not in columns]
    if missing:
        raise RawFileDamaged(f"raw file {path} lacks the columns {missing}: {RESTORE}")


_FILE_NAME = re.compile(r"(?P<topic>.+)-(?P<epoch>\d+)-(?P<partition>\d+)-(?P<first>\d+)-(?P<last>\d+)\.parquet")


@dataclass(frozen=True)
class BatchRange:
    """The offsets ``first..last`` (inclusive) of one partition in one log epoch."""

    topic: str
    epoch: int
    partition: int
    first: int
    last: int

    @property
    def file_name(self) -> str:
        return f"{self.topic}-{self.epoch}-{self.partition}-{self.first}-{self.last}.parquet"

    @classmethod
    def parse(cls, name: str) -> BatchRange | None:
        match = _FILE_NAME.fullmatch(name)
        if match is None:
            return None
        return cls(
            topic=match["topic"],
            epoch=int(match["epoch"]),
            partition=int(match["partition"]),
            first=int(match["first"]),
            last=int(match["last"]),
        )


def read_ends(files: list[Path], manifests: dict[int, Manifest]) -> dict[str, dict]:
    """What ``files`` hold of each partition: its latest log epoch among them, the offset after the last
    one they hold in it, and that log's identity when known, ``{"<partition>": {"epoch", "offset",
    "log"}}``. A day's covered files hold every event of the day below that offset: the archiver
    publishes all of a batch's dates before its manifest moves past them."""
    ends: dict[str, dict] = {}
    for path in files:
        batch = BatchRange.parse(path.name)
        if batch is None:
            continue
        key = str(batch.partition)
        latest = ends.get(key, {"epoch": -1, "offset": 0})
        if (batch.epoch, batch.last + 1) > (latest["epoch"], latest["offset"]):
            ends[key] = {"epoch": batch.epoch, "offset": batch.last + 1}
    for key, end in ends.items():
        manifest = manifests.get(int(key))
        known = manifest.log_ids.get(str(end["epoch"])) if manifest else None
        if known:
            end["log"] = known
    return dict(sorted(ends.items(), key=lambda item: int(item[0])))


@dataclass(frozen=True)
class Manifest:
    """Per partition: the log epoch, and the offset the next batch must start at."""

    topic: str
    partition: int
    epoch: int = 0
    next_offset: int = 0
    # Fingerprint of the record at next_offset - 1, to recognise the same log on resume.
    last_record: dict | None = None
    # Earlier epochs and the offset each ended at (exclusive).
    closed_epochs: dict[str, int] = field(default_factory=dict)
    # Per epoch, the identity of the log read in it (boundary.log_id), once its offset 0 is archived.
    log_ids: dict[str, str] = field(default_factory=dict)
    updated_at: str | None = None

    def covers(self, batch: BatchRange) -> bool:
        if batch.topic != self.topic or batch.partition != self.partition:
            return False
        if batch.epoch == self.epoch:
            return batch.last < self.next_offset
        end = self.closed_epochs.get(str(batch.epoch))
        return end is not None and batch.last < end

    def advanced(self, batch: BatchRange, last_record: dict, first_record: dict | None = None) -> Manifest:
        log_ids, identity = self.log_ids, log_id(first_record)
        if batch.first == 0 and identity:
            log_ids = {**log_ids, str(batch.epoch): identity}
        return replace(self, next_offset=batch.last + 1, last_record=last_record, log_ids=log_ids, updated_at=_now())

    def new_epoch(self) -> Manifest:
        closed = {**self.closed_epochs, str(self.epoch): self.next_offset}
        return replace(
            self, epoch=self.epoch + 1, next_offset=0, last_record=None, closed_epochs=closed, updated_at=_now()
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RawStore:
    def __init__(self, data_dir: Path, topic: str) -> None:
        self.data_dir = data_dir
        self.topic = topic
        layout = Layout(data_dir)
        self.events_dir = layout.raw_events
        self.dead_letter_dir = layout.dead_letter
        self.state_dir = layout.archiver_state(topic)
        self.temp_dir = layout.temp("archiver")

    # paths

    def event_file(self, event_date: date, batch: BatchRange) -> Path:
        return self.events_dir / f"event_date={event_date.isoformat()}" / batch.file_name

    def dead_letter_file(self, ingest_date: date, batch: BatchRange) -> Path:
        return self.dead_letter_dir / f"ingest_date={ingest_date.isoformat()}" / batch.file_name

    def manifest_path(self, partition: int) -> Path:
        return self.state_dir / f"partition-{partition}.json"

    def status_path(self, partition: int) -> Path:
        return self.state_dir / f"status-{partition}.json"

    def partitions(self, fallback: int) -> range:
        """The topic's partitions, as the broker reported them to the archivers: each status records
        the count its archiver saw, and a partition that has reported counts too. ``fallback`` (the
        setting) only while no archiver has said."""
        seen, counts = [], []
        for path in self.state_dir.glob("status-*.json"):
            status = read_json(path, PROGRESS_ONLY) or {}
            if isinstance(status.get("partition"), int):
                seen.append(status["partition"] + 1)
            if isinstance(status.get("topic_partitions"), int):
                counts.append(status["topic_partitions"])
        return range(max(counts + seen) if counts else max(seen + [fallback]))

    # manifests

    def read_manifest(self, partition: int) -> Manifest:
        path = self.manifest_path(partition)
        document = read_json(path, MANIFEST_LOST)
        if document is None:
            return Manifest(topic=self.topic, partition=partition)
        try:
            manifest = Manifest(**document)
            valid = manifest.topic == self.topic and manifest.partition == partition and manifest.next_offset >= 0
        except TypeError as error:  # not an object, or other keys
            raise DamagedFile(path, str(error), MANIFEST_LOST) from None
        if not valid:
            raise DamagedFile(
                path,
                f"it names {document.get('topic')}[{document.get('partition')}] "
                f"at offset {document.get('next_offset')}",
                MANIFEST_LOST,
            )
        return manifest

    def manifests(self) -> dict[int, Manifest]:
        found = {}
        for path in sorted(self.state_dir.glob("partition-*.json")):
            partition = int(path.stem.removeprefix("partition-"))
            found[partition] = self.read_manifest(partition)
        return found

    # what readers see

    def files_for_date(self, event_date: date) -> list[Path]:
        """The published files of one event date that the manifests cover, in offset order."""
        return self.files_for_dates([event_date])[event_date]

    def files_for_dates(self, event_dates: Iterable[date]) -> dict[date, list[Path]]:
        """:meth:`files_for_date` for each of ``event_dates``, reading the manifests once."""
        manifests = self.manifests()
        return {day: self._covered(self.events_dir / f"event_date={day.isoformat()}", manifests) for day in event_dates}

    def dead_letter_files(self) -> list[Path]:
        manifests = self.manifests()
        folders = sorted(self.dead_letter_dir.glob("ingest_date=*"))
        return [path for folder in folders for path in self._covered(folder, manifests)]

    def event_dates(self) -> list[date]:
        return sorted(
            date.fromisoformat(folder.name.removeprefix("event_date="))
            for folder in self.events_dir.glob("event_date=*")
        )

    def _covered(self, folder: Path, manifests: dict[int, Manifest]) -> list[Path]:
        covered = []
        for path in folder.glob("*.parquet"):
            batch = BatchRange.parse(path.name)
            if batch is None or batch.topic != self.topic:
                continue
            manifest = manifests.get(batch.partition)
            if manifest is not None and manifest.covers(batch):
                covered.append((batch.partition, batch.epoch, batch.first, path))
        return [path for *_, path in sorted(covered)]
