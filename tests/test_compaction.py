"""Compaction of the raw events table, on a local directory and on a local S3-compatible server:
every row kept once, one partition and epoch per file, archivers never fenced by it, and two
compactions at once refused by the table. Frames are real classifier output (test_raw_tables.batch)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lambdaflow.batch import compaction
from lambdaflow.batch.compaction import CompactionRaced, commit_merges, compact_events, plan, stats
from lambdaflow.batch.maintenance import maintain_tables
from lambdaflow.core.config import Settings
from lambdaflow.core.raw_tables import RawTables, ResumePoint
from lambdaflow.core.storage import Storage
from tests.test_raw_tables import INGESTED, TOPIC, batch

DAY = INGESTED.date()


def settings_for(storage: Storage, tmp_path: Path) -> Settings:
    env = {"LAMBDAFLOW_DATA_DIR": str(tmp_path / "data"), "LAMBDAFLOW_TOPIC": TOPIC}
    return replace(Settings.from_env(env), storage=storage)


def archive(tables: RawTables, partition: int, since: ResumePoint, batches: int, size: int = 50) -> ResumePoint:
    """``batches`` commits of ``size`` offsets each, as the archiver makes them; the new resume point."""
    for _ in range(batches):
        until = ResumePoint(since.epoch, since.next_offset + size)
        events, rejects = batch(partition, since.next_offset, until.next_offset - 1)
        tables.begin(partition, since).commit(until, events, rejects)
        since = until
    return since


def table_rows(tables: RawTables) -> pl.DataFrame:
    """Every row of the events table's current version, in Kafka order, read as any reader would."""
    table = DeltaTable(tables.events_uri, storage_options=tables.storage.delta_options())
    frame = pl.from_arrow(pa.table(table.to_pyarrow_table()))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("kafka_partition", "log_epoch", "kafka_offset")


def shape(tables: RawTables) -> list[tuple[int, int, int, int]]:
    ranges = tables.snapshot().file_ranges([DAY]).get(DAY, [])
    return [(each.partition, each.epoch, each.first, each.last) for each in ranges]


def last_commit(tables: RawTables) -> list[dict]:
    table = DeltaTable(tables.events_uri, storage_options=tables.storage.delta_options())
    entry = f"{tables.events_uri}/_delta_log/{table.version():020d}.json"
    with tables.storage.open(entry) as handle:
        return [json.loads(line) for line in handle.read().decode().splitlines() if line.strip()]


def test_compaction_merges_each_partitions_small_files_and_keeps_every_row_once(
    storage: Storage, tmp_path: Path
) -> None:
    tables = RawTables(storage, TOPIC)
    archive(tables, 0, ResumePoint(), 4)
    old_epoch = archive(tables, 1, ResumePoint(), 3)
    new_epoch = tables.start_epoch(1, old_epoch)  # the partition's log restarted: offsets from 0 again
    archive(tables, 1, new_epoch, 2)
    resume = {p: tables.resume_point(p) for p in (0, 1)}
    before = table_rows(tables)
    assert len(shape(tables)) == 9

    settings = settings_for(storage, tmp_path)
    assert compact_events(settings, dry_run=True) == {"compacted_files": 9, "written_files": 3}
    assert len(shape(tables)) == 9  # a dry run commits nothing
    assert compact_events(settings) == {"compacted_files": 9, "written_files": 3}

    # one file per partition and epoch, with the offsets the statistics say
    assert shape(tables) == [(0, 0, 1, 199), (1, 0, 1, 149), (1, 1, 1, 99)]
    assert table_rows(tables).equals(before)  # every row, every column, once
    assert {p: tables.resume_point(p) for p in (0, 1)} == resume
    actions = [each for each in last_commit(tables) if "add" in each or "remove" in each]
    assert len(actions) == 12 and all(not next(iter(each.values()))["dataChange"] for each in actions)
    for added in (each["add"] for each in actions if "add" in each):  # statistics as of the whole file
        with storage.open(f"{tables.events_uri}/{added['path']}") as handle:
            assert json.loads(added["stats"]) == stats(pl.read_parquet(handle))
    assert compact_events(settings) == {"compacted_files": 0, "written_files": 0}  # nothing left to merge


def test_small_runs_are_cut_at_the_target_size(storage: Storage, tmp_path: Path) -> None:
    tables = RawTables(storage, TOPIC)
    archive(tables, 0, ResumePoint(), 6)
    ranges = tables.snapshot().file_ranges([DAY])
    size = ranges[DAY][0].size_bytes
    merges = plan(ranges, {}, target=int(size * 2.5))  # two files fit, a third does not
    assert [merge.sources for merge in merges] == [ranges[DAY][0:2], ranges[DAY][2:4], ranges[DAY][4:6]]


def test_files_a_build_read_are_never_merged_with_late_ones(storage: Storage, tmp_path: Path) -> None:
    """The build covered offsets below 100 of partition 0 and nothing of partition 1: the files after
    that point, and all of partition 1, are late and merge only among themselves."""
    tables = RawTables(storage, TOPIC)
    archive(tables, 0, ResumePoint(), 4)
    archive(tables, 1, ResumePoint(), 2)
    manifest = {"days": {DAY.isoformat(): {"covered": {"0": {"epoch": 0, "offset": 100}}}}}
    ranges = tables.snapshot().file_ranges([DAY])
    files = ranges[DAY]  # partition 0's four, then partition 1's two
    assert sorted(merge.sources for merge in plan(ranges, manifest)) == [files[0:2], files[2:4], files[4:6]]


def test_an_archiver_and_a_compaction_never_fence_each_other(storage: Storage, tmp_path: Path) -> None:
    tables = RawTables(storage, TOPIC)
    since = archive(tables, 0, ResumePoint(), 3)
    # The archiver reads the table, a compaction commits, then the archiver's batch lands.
    pending = tables.begin(0, since)
    assert compact_events(settings_for(storage, tmp_path))["written_files"] == 1
    pending.commit(ResumePoint(0, since.next_offset + 50), *batch(0, since.next_offset, since.next_offset + 49))
    since = ResumePoint(0, since.next_offset + 50)
    # A compaction plans from one version, an archiver commits, then the compaction lands.
    table = tables.snapshot().events
    assert table is not None
    merges = plan(tables.snapshot().file_ranges([DAY]), {})
    since = archive(tables, 0, since, 1)
    commit_merges(storage, tables, table, DAY, merges)

    assert tables.resume_point(0) == since
    offsets = table_rows(tables)["kafka_offset"].to_list()
    assert offsets == [offset for offset in range(since.next_offset) if offset % 7]  # each valid offset once


def test_of_two_compactions_at_once_the_second_is_refused_and_nothing_is_doubled(
    storage: Storage, tmp_path: Path
) -> None:
    tables = RawTables(storage, TOPIC)
    since = archive(tables, 0, ResumePoint(), 4)
    first, second = tables.snapshot().events, tables.snapshot().events
    assert first is not None and second is not None
    merges = plan(tables.snapshot().file_ranges([DAY]), {})
    commit_merges(storage, tables, first, DAY, merges)
    with pytest.raises(CompactionRaced, match="another compaction committed"):
        commit_merges(storage, tables, second, DAY, merges)
    offsets = table_rows(tables)["kafka_offset"].to_list()
    assert offsets == [offset for offset in range(since.next_offset) if offset % 7]


def test_a_compaction_that_another_overtook_between_its_days_stops_before_doubling_a_row(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two days of two files each. Right after the first compaction commits its first day, a second
    compaction runs whole (and so merges the second day); the first must not commit the second day
    again from its plan."""
    tables = RawTables(storage, TOPIC)
    since = ResumePoint()
    for shift in (0, 0, 1, 1):
        until = ResumePoint(0, since.next_offset + 50)
        events, rejects = batch(0, since.next_offset, until.next_offset - 1)
        later = [pl.col("occurred_at") + timedelta(days=shift), pl.col("event_date") + timedelta(days=shift)]
        tables.begin(0, since).commit(until, events.with_columns(later), rejects)
        since = until
    settings = settings_for(storage, tmp_path)
    real, overtaken = compaction.commit_merges, list[object]()

    def then_another(*args: object) -> None:
        real(*args)  # type: ignore[arg-type]
        if not overtaken:
            overtaken.append("the other compaction")  # before it runs: its own commit calls this too
            overtaken.append(compact_events(settings))

    monkeypatch.setattr(compaction, "commit_merges", then_another)
    with pytest.raises(CompactionRaced, match="another compaction committed since this one planned"):
        compact_events(settings)
    assert overtaken[1] == {"compacted_files": 2, "written_files": 1}
    offsets = table_rows(tables)["kafka_offset"].to_list()
    assert offsets == [offset for offset in range(since.next_offset) if offset % 7]  # each once


def test_maintain_reports_the_compaction_with_the_vacuum(storage: Storage, tmp_path: Path) -> None:
    tables = RawTables(storage, TOPIC)
    archive(tables, 0, ResumePoint(), 3)
    reports = {each["table"]: each for each in maintain_tables(settings_for(storage, tmp_path))}
    assert (reports["events"]["compacted_files"], reports["events"]["written_files"]) == (3, 1)
    assert (reports["dead_letter"]["compacted_files"], reports["dead_letter"]["written_files"]) == (0, 0)
    assert reports["events"]["removed_files"] == 0  # the merged files stay for the kept period
    assert len(shape(tables)) == 1
