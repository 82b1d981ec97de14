"""6b. Compaction: a day of the raw events table read before and after its small files are merged.

A day's events of 3 partitions are committed to a fresh events table as the archiver leaves them at
the default roll (the footprint row's files per partition per day), all in one commit so that the
set-up stays quick. `lambdaflow maintain`'s compaction then merges them, timed. The merged-away files
stay on disk until a vacuum, so the day is read through both file lists in alternating blocks: the
files of the version before the compaction, and those after. The query is what a build's staging
reads of a day: rows, distinct users, amounts.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
from deltalake import DeltaTable
from deltalake.transaction import AddAction, RemoveAction

from bench.core import Context, Row
from lambdaflow.batch.compaction import compact_events, stats
from lambdaflow.core.config import Settings
from lambdaflow.core.raw_tables import EVENTS_SCHEMA, RawTables

DAY = date(2026, 11, 30)
PARTITIONS = 3
TARGET_RATIO = 0.5
"""A compacted day reads in at most half the time of the same day in the archiver's small files."""
QUERY = "select count(*), count(distinct user_id), sum(amount_cents) from read_parquet($files)"


def compaction_row(ctx: Context, files_per_partition: int) -> tuple[Row, str]:
    files_per_partition = 50 if ctx.quick else files_per_partition
    events = 100_000 if ctx.quick else ctx.sizes.ingest_events
    data_dir = ctx.folder("compaction", "data")
    settings = Settings.from_env({"LAMBDAFLOW_DATA_DIR": str(data_dir), "LAMBDAFLOW_TOPIC": "bench"})
    tables = RawTables(settings.storage, settings.topic)
    _small_files(tables, events, files_per_partition)
    before = tables.snapshot().event_files([DAY])[DAY]
    started = time.perf_counter()
    report = compact_events(settings)
    seconds = time.perf_counter() - started
    after = tables.snapshot().event_files([DAY])[DAY]
    timings = _alternate(settings, {"before": before, "after": after}, 3 if ctx.quick else 15)
    p50 = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    ratio = p50["after"] / p50["before"]
    met = ratio <= TARGET_RATIO
    row = Row(
        id="files.compaction",
        what="files: a day's raw scan after compaction against before",
        figure=round(p50["after"], 1),
        unit="ms",
        peer=f"the same day in {len(before):,} archiver files",
        peer_figure=round(p50["before"], 1),
        ratio=round(ratio, 3),
        target=f"<= {TARGET_RATIO:g}x",
        met=met,
        why=""
        if met
        else f"{p50['after']:.1f} ms after against {p50['before']:.1f} ms before: {ratio:.2f}x, over {TARGET_RATIO:g}x",
        detail={
            "events": events,
            "files_before": len(before),
            "files_after": len(after),
            "compaction_seconds": round(seconds, 2),
            **report,
        },
    )
    text = (
        f"\n\nCompaction (`files.compaction`): {events:,} events of one day in {files_per_partition:,} files per "
        f"partition ({len(before):,} in all), as the archiver leaves them at the default roll, merged by "
        f"`lambdaflow maintain`'s compaction in {seconds:.1f} s into {len(after)} files. A day's scan ({QUERY!r}) "
        f"through each file list, in alternating blocks: {p50['before']:.1f} ms before, {p50['after']:.1f} ms after "
        f"(medians). Target: at most {TARGET_RATIO:g}x."
    )
    return row, text


def _small_files(tables: RawTables, events: int, files_per_partition: int) -> None:
    """The day's events, ``files_per_partition`` files per partition in offset order, committed at once."""
    per_file = max(1, events // (PARTITIONS * files_per_partition))
    root = Path(tables.events_uri)
    folder = root / f"event_date={DAY.isoformat()}"
    folder.mkdir(parents=True)
    actions: list[AddAction | RemoveAction] = []
    for partition in range(PARTITIONS):
        for n in range(files_per_partition):
            frame = _events(partition, n * per_file, per_file)
            path = folder / f"part-{partition}-{n:05d}.zstd.parquet"
            frame.write_parquet(path, compression="zstd")
            actions.append(
                AddAction(
                    str(path.relative_to(root)),
                    path.stat().st_size,
                    {"event_date": DAY.isoformat()},
                    int(time.time() * 1000),
                    True,
                    json.dumps(stats(frame)),
                )
            )
    schema = _events(0, 0, 1).with_columns(event_date=pl.lit(DAY)).to_arrow().schema
    table = DeltaTable.create(str(root), schema, partition_by=["event_date"])
    table.create_write_transaction(actions, mode="append", schema=table.schema(), partition_by=["event_date"])


def _events(partition: int, first: int, count: int) -> pl.DataFrame:
    offsets = pl.int_range(first, first + count, eager=True, dtype=pl.Int64)
    start = datetime.combine(DAY, datetime.min.time(), UTC)
    frame = pl.DataFrame({"kafka_offset": offsets}).with_columns(
        event_id=pl.format("e-{}-{}", pl.lit(partition), pl.col("kafka_offset")),
        event_type=pl.lit("page_view"),
        user_id=pl.format("u{}", pl.col("kafka_offset") % 50_000),
        occurred_at=pl.lit(start) + pl.duration(milliseconds=pl.col("kafka_offset") * 7 % 86_400_000),
        country=pl.lit("BR"),
        amount_cents=pl.col("kafka_offset") % 1000,
        kafka_topic=pl.lit("bench"),
        kafka_partition=pl.lit(partition, pl.Int32),
        kafka_timestamp=pl.lit(start) + timedelta(hours=1),
        ingested_at=pl.lit(start) + timedelta(hours=1),
        log_epoch=pl.lit(0, pl.Int32),
    )
    columns = [name for name in EVENTS_SCHEMA if name != "event_date"]
    return frame.select(columns + ["log_epoch"]).cast({name: EVENTS_SCHEMA[name] for name in columns})


def _alternate(settings: Settings, lists: dict[str, list[str]], blocks: int) -> dict[str, list[float]]:
    """Each file list's scan, in blocks that alternate which goes first."""
    timings: dict[str, list[float]] = {name: [] for name in lists}
    con = settings.storage.duckdb()
    for block in range(blocks):
        for name in list(lists)[:: 1 if block % 2 == 0 else -1]:
            started = time.perf_counter()
            con.execute(QUERY, {"files": lists[name]}).fetchall()
            timings[name].append(time.perf_counter() - started)
    return timings
