"""Compaction of the raw events table: part of `lambdaflow maintain` and the
`lambda_tables_maintenance` DAG.

The archiver commits one file per Kafka partition per batch: at the default
roll, a thousand small files per partition and day. Compaction merges, per day,
Kafka partition and log epoch, each run of consecutive files smaller than the
target size into one file of about that size, the rows in Kafka order, in one
commit per day that adds the merged files and removes the files they replace.
Every action is marked ``dataChange: false``, as Delta's own OPTIMIZE marks
them: a streaming reader of the table (Spark, Flink) sees no new data. The
removed files stay on the store until a vacuum after the kept period, for the
readers that took their snapshot before.

Each merged file still holds one partition's rows of one epoch, which the raw
table's readers take from the file statistics (lambdaflow.core.raw_tables). A
file whose events the day's last build read is not merged with one holding
events it did not (late ones, lambdaflow.core.late), as the manifest said when
the compaction began: a day stays late, by file, until it is rebuilt. (A build
that publishes while a compaction runs can leave a file holding both; readers
tell late events row by row, so it is counted right all the same.)

Two compactions at once (the DAG on two Airflow workers, or the DAG and
`lambdaflow maintain`) could remove the same files and add their rows twice:
delta-rs does not refuse a commit that removes a file another commit removed
first. Each compaction commit therefore moves the application transaction
``<topic>/compaction`` one past the version its snapshot read, and the table
refuses a commit when another commit set it after that snapshot (the check that
fences a zombie archiver). An archiver's append, which sets only its own
partition's transaction, never conflicts with a compaction, nor it with one.

The dead letter is not compacted: the archiver's own commits rewrite its files
(a batch replaces the rows a crashed one left), and a compaction racing such a
rewrite could keep rows twice. It holds the rejects only.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import groupby
from pathlib import Path

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, RemoveAction

from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.errors import LambdaflowError, first_line
from lambdaflow.core.files import fsync_delta_commits, fsync_dir, write_parquet_durably
from lambdaflow.core.late import holds_late
from lambdaflow.core.raw_tables import FileRange, RawSnapshot, RawTables
from lambdaflow.core.storage import Storage

log = logging.getLogger(__name__)

TARGET_FILE_BYTES = 64 << 20
"""A merged file's size, about (Delta's OPTIMIZE aims at 100 MB; this keeps a merge's rows in memory
within a few hundred MB)."""


class CompactionRaced(LambdaflowError):
    """Another compaction committed over the files this one read."""


@dataclass(frozen=True)
class Merge:
    """A run of one day's files of one partition and epoch, to become one file."""

    day: date
    sources: list[FileRange]

    @property
    def size_bytes(self) -> int:
        return sum(each.size_bytes for each in self.sources)


def plan(ranges: dict[date, list[FileRange]], manifest: dict, target: int = TARGET_FILE_BYTES) -> list[Merge]:
    """The merges that would bring each day's runs of small files to about ``target`` bytes each: runs of
    consecutive files (Kafka order) of one partition and epoch, all read by the day's last build or none
    of them (``manifest``'s ``covered``)."""
    merges = []
    for day in sorted(ranges):
        covered = manifest.get("days", {}).get(day.isoformat(), {}).get("covered")
        late = {each: covered is not None and holds_late(each, covered) for each in ranges[day]}
        kinds = {each: (each.partition, each.epoch, late[each]) for each in ranges[day]}
        for _, group in groupby(sorted(ranges[day], key=lambda each: (kinds[each], each)), key=kinds.__getitem__):
            merges += [Merge(day, run) for run in _runs(list(group), target) if len(run) > 1]
    return merges


def _runs(files: list[FileRange], target: int) -> list[list[FileRange]]:
    """``files`` cut into runs of consecutive small ones, each of about ``target`` bytes at most."""
    runs: list[list[FileRange]] = [[]]
    for each in files:
        if each.size_bytes >= target:
            runs.append([])  # big enough already: it ends the run, and stays as it is
        elif sum(r.size_bytes for r in runs[-1]) + each.size_bytes > target:
            runs.append([each])
        else:
            runs[-1].append(each)
    return runs


def compact_events(settings: Settings, dry_run: bool = False, target: int = TARGET_FILE_BYTES) -> dict:
    """Merge the events table's small files (see the module's docstring); one commit per day, all planned
    from one version. Returns ``{"compacted_files", "written_files"}`` (with ``dry_run``, what it would
    do)."""
    tables = RawTables(settings.storage, settings.topic)
    table = tables.snapshot().events
    report = {"compacted_files": 0, "written_files": 0}
    if table is None:
        return report
    snapshot = RawSnapshot(table, None, tables)
    merges = plan(snapshot.file_ranges(snapshot.event_dates()), read_manifest(settings.documents), target)
    fence = _fence(tables, table)
    for day, merged in groupby(merges, key=lambda each: each.day):
        day_merges = list(merged)
        report["compacted_files"] += sum(len(each.sources) for each in day_merges)
        report["written_files"] += len(day_merges)
        if dry_run:
            continue
        # Only a compaction removes events files: while the fence is where this one left it, every file
        # of the plan is still in the table. The commit then refuses any compaction after this reload.
        table.update_incremental()
        if _fence(tables, table) != fence:
            raise CompactionRaced(f"{tables.events_uri}: another compaction committed since this one planned")
        commit_merges(settings.storage, tables, table, day, day_merges)
        fence += 1
        log.info(
            "%s: %d file(s) merged into %d (%.1f MB)",
            day,
            sum(len(each.sources) for each in day_merges),
            len(day_merges),
            sum(each.size_bytes for each in day_merges) / 1e6,
        )
    return report


def _fence(tables: RawTables, table: DeltaTable) -> int:
    return table.transaction_version(f"{tables.topic}/compaction") or 0


def commit_merges(storage: Storage, tables: RawTables, table: DeltaTable, day: date, merges: list[Merge]) -> None:
    """Write each merge's file, then commit them all, and the removal of their sources, as one version over
    ``table`` as read (the version ``merges`` were planned from). Raises :class:`CompactionRaced` when
    another compaction committed since."""
    base = tables.events_uri
    fence = _fence(tables, table)
    before = table.version()
    written = []
    for merge in merges:
        first, last = merge.sources[0], merge.sources[-1]
        name = f"part-compacted-{first.partition}-{first.epoch}-{first.first}-{last.last}-{uuid.uuid4().hex[:12]}"
        path = f"event_date={day.isoformat()}/{name}.zstd.parquet"
        frame = pl.concat([_read(storage, each.uri) for each in merge.sources])
        written.append((merge, path, _write(storage, f"{base}/{path}", frame), json.dumps(stats(frame))))
    now = int(time.time() * 1000)  # the removal's time: the vacuum keeps the sources for the kept period from it
    partition: dict[str, str | None] = {"event_date": day.isoformat()}
    actions: list[AddAction | RemoveAction] = []
    for merge, path, size, file_stats in written:
        actions.append(AddAction(path, size, partition, now, False, file_stats))
        actions += [RemoveAction(each.path, False, now, each.size_bytes, partition) for each in merge.sources]
    try:
        table.create_write_transaction(
            actions,
            mode="append",
            schema=table.schema(),
            partition_by=["event_date"],
            commit_properties=CommitProperties(
                custom_metadata={"lambdaflow": "compaction"},
                app_transactions=[Transaction(f"{tables.topic}/compaction", fence + 1)],
            ),
        )
    except CommitFailedError as error:
        raise CompactionRaced(
            f"{base}: the table refused the commit of {day}'s merged files ({first_line(error)}): another "
            "compaction committed meanwhile, most likely; the files written are left for the vacuum"
        ) from error
    if not storage.is_s3:
        fsync_delta_commits(Path(base), before)


def _read(storage: Storage, uri: str) -> pl.DataFrame:
    with storage.open(uri) as handle:
        return pl.read_parquet(handle)


def _write(storage: Storage, uri: str, frame: pl.DataFrame) -> int:
    """The merged file, whole and durable before any commit names it; its size in bytes."""
    if storage.is_s3:
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="zstd", statistics=True)
        storage.filesystem().pipe_file(uri, buffer.getvalue())
        return buffer.getbuffer().nbytes
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_durably(frame, path)
    fsync_dir(path.parent)
    return path.stat().st_size


def stats(frame: pl.DataFrame) -> dict:
    """The Delta statistics of a file of ``frame``'s rows, as delta-rs writes them: row count, null
    counts, and minimum and maximum of each column that has an order (timestamps to the millisecond)."""
    mins, maxes = {}, {}
    for name, dtype in frame.schema.items():
        column = frame[name].drop_nulls()
        if column.is_empty() or not (dtype.is_numeric() or dtype.is_temporal() or dtype == pl.String):
            continue
        mins[name], maxes[name] = _stat(column.min()), _stat(column.max())
    return {
        "numRecords": frame.height,
        "minValues": mins,
        "maxValues": maxes,
        "nullCount": {name: frame[name].null_count() for name in frame.columns},
    }


def _stat(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value
