"""The raw store as two Delta tables: every valid event, and the dead letter, of one topic.

``raw/<topic>/events`` is partitioned by ``event_date``, ``raw/<topic>/dead_letter``
by ``ingest_date``; both keep the Kafka coordinates of each row. Where each
Kafka partition's archive stands lives in the events table itself, as a Delta
application transaction: app id ``<topic>/<partition>``, version the partition's
:class:`ResumePoint` (log epoch and next offset). A batch of offsets is archived
by one commit that adds its files and moves that version on, so the files and the
resume point can never disagree, whatever crashes when.

Fencing: a writer states the resume point it started from. The commit is refused
(:class:`Fenced`) when the table says otherwise, or when another commit for the
same partition landed after the writer read the table (delta-rs's conflict check
on application transactions, made atomic by the store's conditional write). A
zombie archiver, one that lost its partition without knowing, therefore fails to
commit and writes nothing twice.

The dead letter of a batch is committed first, replacing whatever rows of that
partition the dead letter holds at or above the batch's first offset: those can
only come from a batch whose events commit never landed (this writer's, before a
crash, or a fenced one's), and are the same records read again. Readers count a
dead-letter row only below its partition's resume point
(:meth:`RawSnapshot.dead_letter_counted`); a new log epoch removes such rows of
the old one before it starts.

The same commit records what the next archiver checks the broker's log against,
as more application transactions of the partition (any 64-bit integers, kept
through checkpoints): the last record's timestamp and CRC, and each epoch's log
identity (its offset 0's). On a local directory, each commit is then fsynced,
its files before its log entry: delta-rs itself never calls fsync.

Readers take one :class:`RawSnapshot`: resume points, each day's files and the
offsets each holds (from the file statistics: a commit writes one partition's
rows of one epoch to a file), all of one version of the tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from lambdaflow.core.contract import EVENT_SCHEMA, REJECT_SCHEMA
from lambdaflow.core.errors import InputError, LambdaflowError
from lambdaflow.core.files import fsync_delta_commits
from lambdaflow.core.storage import Storage

EVENTS_SCHEMA = pl.Schema({**EVENT_SCHEMA, "ingested_at": pl.Datetime("us", "UTC")})
"""What the archiver commits to the events table (``log_epoch`` is added on the way in)."""
DEAD_LETTER_SCHEMA = pl.Schema({**REJECT_SCHEMA, "ingested_at": pl.Datetime("us", "UTC"), "ingest_date": pl.Date()})
"""What it commits to the dead letter."""
_ZSTD = WriterProperties(compression="ZSTD")

OFFSET_BITS = 40
"""A resume point's version keeps the next offset in its low 40 bits (10^12 offsets a log epoch)
and the epoch above them."""


class RawTableDamaged(InputError):
    """A raw table's transaction log cannot be read."""


class Fenced(LambdaflowError):
    """Another writer moved the partition's archive on since this one read where it stood."""


@dataclass(frozen=True, order=True)
class ResumePoint:
    """Where a partition's archive stands: the log epoch and the next offset to archive in it."""

    epoch: int = 0
    next_offset: int = 0

    @property
    def version(self) -> int:
        return (self.epoch << OFFSET_BITS) | self.next_offset

    @classmethod
    def of_version(cls, version: int | None) -> ResumePoint:
        if version is None:
            return cls()
        return cls(version >> OFFSET_BITS, version & ((1 << OFFSET_BITS) - 1))


class RawTables:
    """The events and dead-letter tables of one topic, on one :class:`Storage`."""

    def __init__(self, storage: Storage, topic: str) -> None:
        self.storage = storage
        self.topic = topic
        self.events_uri = storage.table_uri("raw", topic, "events")
        self.dead_letter_uri = storage.table_uri("raw", topic, "dead_letter")
        self._options = storage.delta_options()

    def app_id(self, partition: int) -> str:
        return f"{self.topic}/{partition}"

    def _open(self, uri: str) -> DeltaTable | None:
        try:
            return DeltaTable(uri, storage_options=self._options)
        except TableNotFoundError:
            return None
        except DeltaError as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RawTableDamaged(
                f"the raw table {uri} cannot be read ({reason}): restore its _delta_log from a backup; "
                "it says which files count and where each partition resumes, and lambdaflow will not guess"
            ) from None

    def existing(self) -> dict[str, DeltaTable]:
        """The tables created so far, by name (``events``, ``dead_letter``)."""
        found = {"events": self._open(self.events_uri), "dead_letter": self._open(self.dead_letter_uri)}
        return {name: table for name, table in found.items() if table is not None}

    def snapshot(self) -> RawSnapshot:
        """The tables as committed now: every answer read from it comes from this one version."""
        return RawSnapshot(self._open(self.events_uri), self._open(self.dead_letter_uri), self)

    def resume_point(self, partition: int) -> ResumePoint:
        """Where the partition's archive stands (epoch 0, offset 0 before its first commit)."""
        return self.snapshot().resume_point(partition)

    def begin(self, partition: int, since: ResumePoint) -> BatchCommit:
        """Start archiving a batch of ``partition`` from ``since``; raises :class:`Fenced` at once when
        the partition does not stand there."""
        table = self._open(self.events_uri)
        standing = ResumePoint.of_version(table.transaction_version(self.app_id(partition)) if table else None)
        if standing != since:
            raise Fenced(
                f"{self.app_id(partition)}: the archive stands at epoch {standing.epoch} offset "
                f"{standing.next_offset}, not at epoch {since.epoch} offset {since.next_offset}: "
                "another archiver took the partition"
            )
        return BatchCommit(self, partition, since, table)

    def _create(self, uri: str, like: pl.DataFrame, partition_by: str) -> DeltaTable:
        """The table at ``uri``, created with the columns of ``like`` unless it exists (another writer
        may be creating it at the same moment: one creation lands, the other finds it)."""
        try:
            DeltaTable.create(
                uri, like.to_arrow().schema, mode="ignore", partition_by=[partition_by], storage_options=self._options
            )
        except DeltaError:
            pass
        table = self._open(uri)
        if table is None:
            raise LambdaflowError(f"the table {uri} could not be created")
        self._made_durable(uri, None)
        return table

    def _made_durable(self, uri: str, after_version: int | None) -> None:
        if not self.storage.is_s3:  # a store's PUT is durable once answered
            fsync_delta_commits(Path(uri), after_version)

    def _replace_dead_letter(self, partition: int, since: ResumePoint, rejects: pl.DataFrame) -> None:
        table = self._open(self.dead_letter_uri) or self._create(self.dead_letter_uri, rejects, "ingest_date")
        before = table.version()
        write_deltalake(
            table, rejects, mode="overwrite", predicate=_at_or_after(partition, since), writer_properties=_ZSTD
        )
        self._made_durable(self.dead_letter_uri, before)

    def _drop_dead_letter_from(self, partition: int, since: ResumePoint) -> None:
        table = self._open(self.dead_letter_uri)
        if table is not None and any(
            each.partition == partition and each.epoch == since.epoch and each.last >= since.next_offset
            for ranges in _ranges(table, "ingest_date").values()
            for each in ranges
        ):
            before = table.version()
            table.delete(_at_or_after(partition, since))
            self._made_durable(self.dead_letter_uri, before)

    def start_epoch(self, partition: int, since: ResumePoint) -> ResumePoint:
        """The partition's log restarted: archive the new log from its beginning, in epoch
        ``since.epoch + 1``. The dead-letter rows of the old epoch at or above ``since`` (left by a
        batch whose events never committed) go first; then a commit with no rows moves the resume
        point, fenced like a batch. Returns the new resume point."""
        new = ResumePoint(since.epoch + 1, 0)
        self.begin(partition, since).commit(
            new, pl.DataFrame(schema=EVENTS_SCHEMA), pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
        )
        return new


class RawSnapshot:
    """One version of the events and dead-letter tables, read once."""

    def __init__(self, events: DeltaTable | None, dead_letter: DeltaTable | None, tables: RawTables) -> None:
        self.events = events
        self.dead_letter = dead_letter
        self.tables = tables

    @cached_property
    def _event_ranges(self) -> dict[date, list[FileRange]]:
        """Every events file's range, by day: read from the table's add actions once per snapshot."""
        return _ranges(self.events, "event_date") if self.events is not None else {}

    @cached_property
    def _dead_letter_ranges(self) -> list[FileRange]:
        if self.dead_letter is None:
            return []
        return [each for ranges in _ranges(self.dead_letter, "ingest_date").values() for each in ranges]

    @property
    def version(self) -> int | None:
        """The events table's version (None: nothing archived yet)."""
        return self.events.version() if self.events is not None else None

    def resume_point(self, partition: int) -> ResumePoint:
        if self.events is None:
            return ResumePoint()
        return ResumePoint.of_version(self.events.transaction_version(self.tables.app_id(partition)))

    def _marker(self, name: str) -> int | None:
        return self.events.transaction_version(name) if self.events is not None else None

    def last_record(self, partition: int) -> dict | None:
        """The fingerprint of the record just before the partition's resume point, as archived
        (None before its first batch, or after a new epoch began)."""
        point, app = self.resume_point(partition), self.tables.app_id(partition)
        offset = self._marker(f"{app}/last_record_offset")
        timestamp, crc32 = self._marker(f"{app}/last_record_timestamp"), self._marker(f"{app}/last_record_crc32")
        if point.next_offset == 0 or offset != point.next_offset - 1 or timestamp is None or crc32 is None:
            return None  # none recorded for this resume point
        return {"offset": point.next_offset - 1, "timestamp": timestamp, "crc32": crc32}

    def log_id(self, partition: int, epoch: int) -> str | None:
        """The identity of the log the partition's ``epoch`` archived (boundary.log_id), once its
        offset 0 is in the table."""
        prefix = f"{self.tables.app_id(partition)}/epoch-{epoch}"
        timestamp, crc32 = self._marker(f"{prefix}/log_timestamp"), self._marker(f"{prefix}/log_crc32")
        return None if timestamp is None or crc32 is None else f"{timestamp}-{crc32}"

    def event_files(self, days: Iterable[date]) -> dict[date, list[str]]:
        """Each day's files, in Kafka order (partition, epoch, first offset)."""
        days = list(days)
        ranges = self.file_ranges(days)
        return {day: [each.uri for each in ranges.get(day, [])] for day in days}

    def file_ranges(self, days: Iterable[date]) -> dict[date, list[FileRange]]:
        """Each day's files with the partition, log epoch and offsets each holds (a commit writes one
        Kafka partition's rows of one epoch to a file: its statistics say which)."""
        return {day: self._event_ranges[day] for day in set(days) if day in self._event_ranges}

    def event_dates(self) -> list[date]:
        return sorted(self._event_ranges)

    def archived_partitions(self, known: Iterable[int] = ()) -> list[int]:
        """The partitions with a resume point: those whose rows the tables hold, and of ``known`` the
        ones that have one (a partition may have begun a new epoch and archived nothing yet)."""
        candidates = set(known) | {each.partition for each in self._dead_letter_ranges}
        candidates |= {each.partition for ranges in self._event_ranges.values() for each in ranges}
        return sorted(p for p in candidates if self._marker(self.tables.app_id(p)) is not None)

    def dead_letter_files(self) -> list[str]:
        return [each.uri for each in self._dead_letter_ranges]

    def dead_letter_counted(self) -> str:
        """A SQL condition on dead-letter rows: true for the rows a committed batch archived (below
        its partition's resume point), false for what a batch that never committed left."""
        if self.dead_letter is None:
            return "false"
        partitions = sorted({each.partition for each in self._dead_letter_ranges})
        terms = []
        for partition in partitions:
            point = self.resume_point(partition)
            terms.append(
                f"(kafka_partition = {partition} and (log_epoch < {point.epoch} "
                f"or (log_epoch = {point.epoch} and kafka_offset < {point.next_offset})))"
            )
        return " or ".join(terms) or "false"


@dataclass(frozen=True, order=True)
class FileRange:
    """One file of a table and the Kafka offsets it holds."""

    partition: int
    epoch: int
    first: int
    last: int
    uri: str
    rows: int
    size_bytes: int
    path: str = ""
    """The file's path within its table, as its log names it."""


def _ranges(table: DeltaTable, day_column: str) -> dict[date, list[FileRange]]:
    """Each file's range, by its partition value of ``day_column``, in Kafka order."""
    actions = pl.from_arrow(pa.table(table.get_add_actions(flatten=True)))
    assert isinstance(actions, pl.DataFrame)
    base = unquote(table.table_uri.removeprefix("file://")).rstrip("/")  # Delta gives it percent-encoded
    found: dict[date, list[FileRange]] = {}
    for row in actions.iter_rows(named=True):
        day = row[f"partition.{day_column}"]
        if row["min.kafka_partition"] != row["max.kafka_partition"] or row["min.log_epoch"] != row["max.log_epoch"]:
            raise LambdaflowError(f"{base}/{row['path']} holds rows of more than one Kafka partition or log epoch")
        found.setdefault(day, []).append(
            FileRange(
                partition=row["min.kafka_partition"],
                epoch=row["min.log_epoch"],
                first=row["min.kafka_offset"],
                last=row["max.kafka_offset"],
                uri=f"{base}/{row['path']}",
                rows=row["num_records"],
                size_bytes=row["size_bytes"],
                path=row["path"],
            )
        )
    return {day: sorted(ranges) for day, ranges in found.items()}


@dataclass
class BatchCommit:
    """One batch on its way into the tables, from the snapshot its writer read."""

    tables: RawTables
    partition: int
    since: ResumePoint
    table: DeltaTable | None  # the events table as read by begin (None: not created yet)

    def commit(
        self,
        until: ResumePoint,
        events: pl.DataFrame,
        rejects: pl.DataFrame,
        last_record: dict | None = None,
        first_record: dict | None = None,
    ) -> None:
        """The batch's rejects, then its events with the partition's new resume point ``until``, in
        one commit that lands only if no commit for the partition landed since :meth:`RawTables.begin`
        read the table; otherwise :class:`Fenced`, with no event committed.

        ``last_record``: the fingerprint (offset, timestamp, crc32) of the batch's last record, which
        the next archiver checks the log against; ``first_record``, the batch's first, names the log
        when it is offset 0. Both travel in the same commit (see :meth:`RawSnapshot.last_record`)."""
        tables, app = self.tables, self.tables.app_id(self.partition)
        markers = [Transaction(app, until.version)]
        if last_record is not None:
            markers += [
                Transaction(f"{app}/last_record_offset", int(last_record["offset"])),
                Transaction(f"{app}/last_record_timestamp", int(last_record["timestamp"])),
                Transaction(f"{app}/last_record_crc32", int(last_record["crc32"])),
            ]
        if first_record is not None and first_record.get("offset") == 0:
            markers += [
                Transaction(f"{app}/epoch-{self.since.epoch}/log_timestamp", int(first_record["timestamp"])),
                Transaction(f"{app}/epoch-{self.since.epoch}/log_crc32", int(first_record["crc32"])),
            ]
        events, rejects = _for_delta(events, self.since.epoch), _for_delta(rejects, self.since.epoch)
        table = self.table
        if table is None:  # the topic's first batch anywhere: create the table, then check again
            table = tables._create(tables.events_uri, events, "event_date")
            tables.begin(self.partition, self.since)
        try:
            if rejects.height:
                tables._replace_dead_letter(self.partition, self.since, rejects)
            elif until.epoch != self.since.epoch:
                tables._drop_dead_letter_from(self.partition, self.since)
            before = table.version()
            write_deltalake(
                table,
                events,
                mode="append",
                writer_properties=_ZSTD,
                commit_properties=CommitProperties(app_transactions=markers),
            )
        except CommitFailedError as error:
            raise Fenced(f"{app}: another archiver committed this partition first ({error})") from error
        tables._made_durable(tables.events_uri, before)


def _at_or_after(partition: int, point: ResumePoint) -> str:
    return f"kafka_partition = {int(partition)} and log_epoch = {point.epoch} and kafka_offset >= {point.next_offset}"


def _for_delta(frame: pl.DataFrame, epoch: int) -> pl.DataFrame:
    """A batch's rows with their log epoch (offsets start again in each); timestamps in microseconds,
    as Delta keeps them."""
    return frame.with_columns(
        pl.col(pl.Datetime("ms", "UTC")).dt.cast_time_unit("us"), log_epoch=pl.lit(epoch, pl.Int32)
    )
