"""The raw store, as its readers see it: one snapshot of the archiver's Delta tables.

The archiver commits every message once to two Delta tables on the storage
(:mod:`lambdaflow.core.raw_tables`, docs/storage.md): the events, partitioned by
``event_date``, and the dead letter, partitioned by ``ingest_date``. Under the
data directory it keeps only its progress reports::

    archiver/<topic>/status-<p>.json       progress, for completeness checks and status

A reader takes the tables as committed at one moment (:meth:`RawStore.snapshot`)
and reads every answer (the files of a day, the offsets each holds, where each
partition resumes) from it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from lambdaflow.core.errors import InputError, first_line
from lambdaflow.core.files import PROGRESS_ONLY, read_json, remove_stale_temps, replace_json
from lambdaflow.core.layout import Layout
from lambdaflow.core.raw_tables import FileRange, RawSnapshot, RawTables, ResumePoint
from lambdaflow.core.storage import Storage

log = logging.getLogger(__name__)

RESTORE = "restore it from a backup (an archived raw event is never changed or removed)"


class RawFileDamaged(InputError):
    """A published raw file is gone, changed or unreadable: nothing built from it would be right."""


def require_readable(uri: str, storage: Storage) -> None:
    """Refuse a raw file that is not a whole Parquet file with the event columns (reads its footer only)."""
    import polars as pl

    from lambdaflow.core.contract import EVENT_SCHEMA

    try:
        with storage.open(uri) as handle:
            columns = pl.read_parquet_schema(handle)
    except FileNotFoundError:
        raise RawFileDamaged(f"raw file {uri} is missing: {RESTORE}") from None
    except (OSError, pl.exceptions.PolarsError) as error:
        reason = first_line(error)
        raise RawFileDamaged(f"raw file {uri} is not a readable Parquet file ({reason}): {RESTORE}") from None
    missing = [name for name in EVENT_SCHEMA if name != "event_date" and name not in columns]
    if missing:
        raise RawFileDamaged(f"raw file {uri} lacks the columns {missing}: {RESTORE}")


def read_ends(ranges: Iterable[FileRange], snapshot: RawSnapshot) -> dict[str, dict]:
    """What the files ``ranges`` hold of each partition: its latest log epoch among them, the offset
    after the last one they hold in it, and that log's identity when known, ``{"<partition>": {"epoch",
    "offset", "log"}}``. A day's files hold every event of the day below that offset: the archiver
    commits all of a batch's dates at once."""
    ends: dict[str, dict] = {}
    for each in ranges:
        key = str(each.partition)
        latest = ends.get(key, {"epoch": -1, "offset": 0})
        if (each.epoch, each.last + 1) > (latest["epoch"], latest["offset"]):
            ends[key] = {"epoch": each.epoch, "offset": each.last + 1}
    for key, end in ends.items():
        known = snapshot.log_id(int(key), end["epoch"])
        if known:
            end["log"] = known
    return dict(sorted(ends.items(), key=lambda item: int(item[0])))


@dataclass(frozen=True)
class Manifest:
    """Where a partition's archive stands, as one snapshot of the tables says."""

    topic: str
    partition: int
    epoch: int = 0
    next_offset: int = 0
    last_record: dict | None = None
    """Fingerprint of the record at next_offset - 1, to recognise the same log on resume."""
    log_ids: dict[str, str] = field(default_factory=dict)
    """Per epoch, the identity of the log read in it (boundary.log_id), once its offset 0 is archived."""

    @property
    def resume_point(self) -> ResumePoint:
        return ResumePoint(self.epoch, self.next_offset)

    @classmethod
    def of(cls, snapshot: RawSnapshot, topic: str, partition: int) -> Manifest:
        point = snapshot.resume_point(partition)
        log_ids = {str(e): snapshot.log_id(partition, e) for e in range(point.epoch + 1)}
        return cls(
            topic=topic,
            partition=partition,
            epoch=point.epoch,
            next_offset=point.next_offset,
            last_record=snapshot.last_record(partition),
            log_ids={epoch: known for epoch, known in log_ids.items() if known},
        )


class RawStore:
    def __init__(self, data_dir: Path, topic: str, storage: Storage | None = None) -> None:
        self.data_dir = data_dir
        self.topic = topic
        self.storage = storage or Storage.from_env(os.environ, data_dir)
        self.tables = RawTables(self.storage, topic)
        layout = Layout(data_dir)
        self.state_dir = layout.archiver_state(topic)

    def status_path(self, partition: int) -> Path:
        return self.state_dir / f"status-{partition}.json"

    @property
    def status_uri(self) -> str:
        """Where the progress reports live on an S3 storage, beside the tables: every host reads them."""
        return self.storage.table_uri("raw", self.topic, "archiver")

    def read_status(self, partition: int) -> dict | None:
        """The partition's last progress report (None: none yet; DamagedFile: not JSON)."""
        if self.storage.is_s3:
            return self.storage.read_json(f"{self.status_uri}/status-{partition}.json", PROGRESS_ONLY)
        return read_json(self.status_path(partition), PROGRESS_ONLY)

    def write_status(self, partition: int, document: dict) -> None:
        """Replace the partition's progress report: under the data directory, or on the S3 storage,
        where a PUT the store refuses (throttled, unreachable) is logged and the next report, seconds
        later, replaces it: a report only says how far the archive stands, the tables say it."""
        if self.storage.is_s3:
            uri = f"{self.status_uri}/status-{partition}.json"
            try:
                self.storage.write_json(uri, document)
            except OSError as error:
                log.warning("progress report %s not written (%s); the next one replaces it", uri, first_line(error))
        else:
            replace_json(self.status_path(partition), document)

    def take_status(self, partition: int) -> None:
        """Called by the partition's new owner: remove what a writer killed mid-replace left."""
        if not self.storage.is_s3:
            remove_stale_temps(self.status_path(partition))

    def _reporting_partitions(self) -> list[int]:
        if self.storage.is_s3:
            names = self.storage.list_names(self.status_uri)
        else:
            names = [path.name for path in self.state_dir.glob("status-*.json")]
        found = [re.fullmatch(r"status-(\d+)\.json", name) for name in names]
        return sorted(int(match[1]) for match in found if match)

    def statuses(self, fallback: int) -> dict[int, dict | None]:
        """Each of the topic's partitions (:meth:`partitions`) with its last progress report (None:
        none yet), every report read once."""
        reports = {partition: self.read_status(partition) for partition in self._reporting_partitions()}
        seen, counts = [], []
        for status in reports.values():
            status = status or {}
            if isinstance(status.get("partition"), int):
                seen.append(status["partition"] + 1)
            if isinstance(status.get("topic_partitions"), int):
                counts.append(status["topic_partitions"])
        expected = range(max(counts + seen) if counts else max(seen + [fallback]))
        return {partition: reports.get(partition) for partition in expected}

    def partitions(self, fallback: int) -> range:
        """The topic's partitions, as the broker reported them to the archivers: each status records
        the count its archiver saw, and a partition that has reported counts too. ``fallback`` (the
        setting) only while no archiver has said."""
        return range(len(self.statuses(fallback)))

    # what readers see

    def snapshot(self) -> RawSnapshot:
        return self.tables.snapshot()

    def manifests(self, snapshot: RawSnapshot | None = None) -> dict[int, Manifest]:
        """Where each archived partition stands."""
        snapshot = snapshot or self.snapshot()
        return {p: Manifest.of(snapshot, self.topic, p) for p in snapshot.archived_partitions(self.partitions(0))}

    def read_manifest(self, partition: int) -> Manifest:
        return Manifest.of(self.snapshot(), self.topic, partition)

    def files_for_date(self, event_date: date) -> list[str]:
        """The URIs of the day's files, in Kafka order."""
        return self.files_for_dates([event_date])[event_date]

    def files_for_dates(self, event_dates: Iterable[date]) -> dict[date, list[str]]:
        return self.snapshot().event_files(event_dates)

    def dead_letter_files(self) -> list[str]:
        return self.snapshot().dead_letter_files()

    def event_dates(self) -> list[date]:
        return self.snapshot().event_dates()
