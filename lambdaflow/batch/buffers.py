"""What the archiver holds per partition between publishes.

A partition's buffer collects classified messages until the roll policy says
publish; the batch is then one commit to the raw tables (lambdaflow.core.raw_tables).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from lambdaflow.core.counters import PartitionCounters
from lambdaflow.core.days import midnight
from lambdaflow.core.files import DamagedFile
from lambdaflow.core.raw_store import Manifest, RawStore
from lambdaflow.kafka.log_identity import fingerprint
from lambdaflow.kafka.loop import Counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollPolicy:
    """When a partition's buffer becomes a file."""

    max_bytes: int = 64 * 1024 * 1024
    max_seconds: float = 300.0
    closed_day_seconds: float = 30.0
    """Caught up with the log and holding events of a day that has ended (a catch-up, or the first
    minutes after midnight), a buffer this old is published: the day's completeness waits on it,
    and a DAG run waiting for the day should not wait a whole roll. At most one file per partition
    this often, so the files per day stay bounded."""

    def due(self, buffer: Buffer, caught_up: bool, until_idle: bool) -> bool:
        """Is it time to publish this (non-empty) buffer?"""
        age = time.monotonic() - buffer.opened_at
        if age >= self.max_seconds or buffer.value_bytes >= self.max_bytes or (until_idle and caught_up):
            return True
        return (
            caught_up
            and age >= min(self.closed_day_seconds, self.max_seconds)
            and buffer.holds_events_before(midnight(datetime.now(UTC).date()))
        )


@dataclass
class Buffer:
    """Classified messages of one partition that are not yet published."""

    epoch: int
    start: int  # the manifest's resume offset when the buffer began
    opened_at: float
    last: int | None = None
    first_record: dict | None = None
    last_record: dict | None = None
    events: list[pl.DataFrame] = field(default_factory=list)
    rejects: list[pl.DataFrame] = field(default_factory=list)
    value_bytes: int = 0
    messages: int = 0
    earliest_event: datetime | None = None

    @property
    def empty(self) -> bool:
        return self.last is None

    def add_events(self, frame: pl.DataFrame) -> None:
        """Classified valid events of the records added."""
        self.events.append(frame)
        if frame.height:
            earliest = frame["occurred_at"].min()
            if isinstance(earliest, datetime) and (self.earliest_event is None or earliest < self.earliest_event):
                self.earliest_event = earliest

    def holds_events_before(self, moment: datetime) -> bool:
        """Does it hold an event that occurred before ``moment``?"""
        return self.earliest_event is not None and self.earliest_event < moment

    def add(self, records: list) -> None:
        """Note a run of a partition's records (their classified frames are added by the caller)."""
        if self.first_record is None:
            self.first_record = fingerprint(records[0])
        self.last = records[-1].offset
        self.last_record = fingerprint(records[-1])
        self.value_bytes += sum(len(r.value or b"") for r in records)
        self.messages += len(records)


@dataclass
class OwnedPartition:
    manifest: Manifest
    buffer: Buffer
    position: int  # the next offset expected from Kafka
    watermark: str | None = None
    caught_up_at: str | None = None
    status_written: float = 0.0
    counters: PartitionCounters = field(default_factory=PartitionCounters)


@dataclass
class Totals(Counts):
    rejects: int = 0
    files: int = 0
    batches: int = 0
    new_epochs: int = 0


def arrived_by(event_time: datetime | str | None, arrival: datetime) -> str | None:
    """A watermark never runs ahead of when its data arrived (invariant 6): a message stamped in the
    future (its occurred_at and Kafka timestamp both) moves it to the time of arrival, no further,
    so it can neither complete a day early nor switch realtime off for the days after."""
    if event_time is None:
        return None
    if isinstance(event_time, str):
        event_time = datetime.fromisoformat(event_time)
    return min(event_time, arrival).astimezone(UTC).isoformat()


def concat_or_empty(frames: list[pl.DataFrame], schema: pl.Schema) -> pl.DataFrame:
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)


def previous_status(store: RawStore, partition: int) -> dict:
    """The partition's last status report, for its watermark; {} when there is none or it is damaged."""
    try:
        status = store.read_status(partition) or {}
    except DamagedFile as error:
        log.warning("%s; writing it anew", error)
        return {}
    return status if isinstance(status, dict) and status.get("epoch") is not None else {}
