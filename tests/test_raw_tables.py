"""The raw store's Delta tables, on a local directory and on a local S3-compatible server.

The S3 server (moto's, which enforces conditional writes as S3 and MinIO do) is
started here and stopped here by its PID. Frames are real classifier output:
each batch is a run of Kafka-shaped records, some of them invalid.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from lambdaflow.batch import airflow_home
from lambdaflow.batch.maintenance import maintain_tables
from lambdaflow.core.config import Settings
from lambdaflow.core.contract import RECORD_SCHEMA, classify
from lambdaflow.core.errors import InputError
from lambdaflow.core.files import DamagedFile
from lambdaflow.core.raw_store import RawStore
from lambdaflow.core.raw_tables import Fenced, RawTables, ResumePoint
from lambdaflow.core.storage import Storage

TOPIC = "events"
INGESTED = datetime(2026, 12, 1, 12, tzinfo=UTC)


def batch(partition: int, first: int, last: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Offsets first..last of a partition, classified: every 7th message is not JSON."""
    offsets = list(range(first, last + 1))
    values = [
        b"not json"
        if offset % 7 == 0
        else (
            f'{{"event_id":"e-{partition}-{offset}","event_type":"page_view","user_id":"u{offset % 5}",'
            f'"occurred_at":"2026-12-01T{offset % 12:02d}:00:00Z"}}'
        ).encode()
        for offset in offsets
    ]
    records = pl.DataFrame(
        {
            "kafka_topic": [TOPIC] * len(offsets),
            "kafka_partition": [partition] * len(offsets),
            "kafka_offset": offsets,
            "kafka_timestamp": [int(INGESTED.timestamp() * 1000)] * len(offsets),
            "key": [f"u{offset % 5}".encode() for offset in offsets],
            "value": values,
        },
        schema_overrides={"kafka_timestamp": pl.Int64},
    ).cast(RECORD_SCHEMA)
    decoded = classify(records)
    stamp = pl.lit(INGESTED).dt.cast_time_unit("us").alias("ingested_at")
    rejects = decoded.rejects.with_columns(stamp, ingest_date=pl.lit(INGESTED.date()))
    return decoded.events.with_columns(stamp), rejects


def rows(storage: Storage, files: list[str], partition: int, below: int, where: str = "true") -> list[int]:
    """The offsets of ``partition`` below ``below`` in ``files`` (and rows meeting ``where``), read by
    DuckDB as a reader would."""
    if not files:
        return []
    found = (
        storage.duckdb()
        .execute(
            f"select kafka_offset from read_parquet($files) where kafka_partition = $p and kafka_offset < $below "
            f"and ({where}) order by 1",
            {"files": files, "p": partition, "below": below},
        )
        .fetchall()
    )
    return [offset for (offset,) in found]


def all_event_files(tables: RawTables) -> list[str]:
    return tables.snapshot().event_files([INGESTED.date()])[INGESTED.date()]


def dead_letter(storage: Storage, tables: RawTables, partition: int) -> list[int]:
    """The partition's dead-letter offsets a reader counts: those below its resume point."""
    snapshot = tables.snapshot()
    return rows(storage, snapshot.dead_letter_files(), partition, 10**12, snapshot.dead_letter_counted())


def test_batches_land_once_each_and_move_the_resume_point(storage: Storage) -> None:
    tables = RawTables(storage, TOPIC)
    assert tables.resume_point(0) == ResumePoint(0, 0)
    first_events, first_rejects = batch(0, 0, 99)
    tables.begin(0, ResumePoint(0, 0)).commit(ResumePoint(0, 100), first_events, first_rejects)
    second_events, second_rejects = batch(0, 100, 249)
    tables.begin(0, ResumePoint(0, 100)).commit(ResumePoint(0, 250), second_events, second_rejects)
    other_events, other_rejects = batch(1, 0, 9)
    tables.begin(1, ResumePoint(0, 0)).commit(ResumePoint(0, 10), other_events, other_rejects)

    assert tables.resume_point(0) == ResumePoint(0, 250)
    assert tables.resume_point(1) == ResumePoint(0, 10)
    rejected = {offset for offset in range(250) if offset % 7 == 0}
    assert rows(storage, all_event_files(tables), 0, 250) == sorted(set(range(250)) - rejected)
    assert dead_letter(storage, tables, 0) == sorted(rejected)
    assert rows(storage, all_event_files(tables), 1, 10) == [o for o in range(10) if o % 7]
    ranges = tables.snapshot().file_ranges([INGESTED.date()])[INGESTED.date()]
    assert [(r.partition, r.epoch, r.first, r.last) for r in ranges] == [(0, 0, 1, 99), (0, 0, 100, 249), (1, 0, 1, 9)]
    assert [r.uri for r in ranges] == all_event_files(tables)


def test_of_two_archivers_racing_for_a_partition_the_fenced_one_commits_nothing(storage: Storage) -> None:
    """Both read the partition at offset 0; the first commit lands, the second is refused by the table's
    own conflict check (not by a check of ours that it could pass stale), and no offset is there twice."""
    tables = RawTables(storage, TOPIC)
    tables.begin(0, ResumePoint(0, 0)).commit(ResumePoint(0, 10), *batch(0, 0, 9))
    winner = tables.begin(0, ResumePoint(0, 10))
    zombie = RawTables(storage, TOPIC).begin(0, ResumePoint(0, 10))
    winner.commit(ResumePoint(0, 100), *batch(0, 10, 99))
    with pytest.raises(Fenced, match="another archiver committed this partition first"):
        zombie.commit(ResumePoint(0, 200), *batch(0, 10, 199))

    assert tables.resume_point(0) == ResumePoint(0, 100)
    with pytest.raises(Fenced, match="stands at epoch 0 offset 100, not at epoch 0 offset 10"):
        tables.begin(0, ResumePoint(0, 10))
    valid = [offset for offset in range(100) if offset % 7]
    assert rows(storage, all_event_files(tables), 0, 10**9) == valid
    # The zombie's dead letter for 10..199 landed before its events were refused: a reader counts
    # only the rows below the resume point.
    snapshot = tables.snapshot()
    assert max(rows(storage, snapshot.dead_letter_files(), 0, 10**9)) == 196
    assert dead_letter(storage, tables, 0) == [o for o in range(100) if o % 7 == 0]

    # The winner's next batch replaces what lies at or above its first offset: each reject is there once.
    tables.begin(0, ResumePoint(0, 100)).commit(ResumePoint(0, 300), *batch(0, 100, 299))
    assert rows(storage, tables.snapshot().dead_letter_files(), 0, 300) == [o for o in range(300) if o % 7 == 0]
    assert rows(storage, all_event_files(tables), 0, 10**9) == [o for o in range(300) if o % 7]


def test_a_new_log_epoch_starts_its_offsets_again(storage: Storage) -> None:
    tables = RawTables(storage, TOPIC)
    tables.begin(0, ResumePoint(0, 0)).commit(ResumePoint(0, 50), *batch(0, 0, 49))
    # A fenced writer's dead letter for 50..119 lands; its events do not.
    winner, zombie = tables.begin(0, ResumePoint(0, 50)), tables.begin(0, ResumePoint(0, 50))
    winner.commit(ResumePoint(0, 60), *batch(0, 50, 59))
    with pytest.raises(Fenced):
        zombie.commit(ResumePoint(0, 120), *batch(0, 50, 119))
    with pytest.raises(Fenced):  # an epoch starts by a commit of its own, from where the last one ended
        tables.begin(0, ResumePoint(1, 0))

    assert tables.start_epoch(0, ResumePoint(0, 60)) == ResumePoint(1, 0)
    tables.begin(0, ResumePoint(1, 0)).commit(ResumePoint(1, 20), *batch(0, 0, 19))
    assert tables.resume_point(0) == ResumePoint(1, 20)
    files = all_event_files(tables)
    valid = [o for o in range(60) if o % 7] + [o for o in range(20) if o % 7]
    assert sorted(rows(storage, files, 0, 10**9)) == sorted(valid)
    # The old epoch's dead letter keeps only what its committed batches archived.
    old_epoch = rows(storage, tables.snapshot().dead_letter_files(), 0, 10**9, "log_epoch = 0")
    assert old_epoch == [o for o in range(60) if o % 7 == 0]
    assert dead_letter(storage, tables, 0) == sorted([o for o in range(60) if o % 7 == 0] + [0, 7, 14])
    assert ResumePoint.of_version(ResumePoint(3, 10**12 - 1).version) == ResumePoint(3, 10**12 - 1)


def test_the_commit_records_the_last_record_and_the_log_it_came_from(storage: Storage) -> None:
    """What the next archiver checks the broker's log against lands with the batch, atomically."""
    tables = RawTables(storage, TOPIC)
    first = {"offset": 0, "timestamp": 1_796_000_000_000, "crc32": 4_000_000_001}
    last = {"offset": 49, "timestamp": 1_796_000_000_049, "crc32": 7}
    tables.begin(0, ResumePoint(0, 0)).commit(ResumePoint(0, 50), *batch(0, 0, 49), last, first)
    snapshot = tables.snapshot()
    assert snapshot.last_record(0) == last
    assert snapshot.log_id(0, 0) == "1796000000000-4000000001"
    assert snapshot.last_record(1) is None and snapshot.log_id(0, 1) is None

    later = {"offset": 59, "timestamp": -1, "crc32": 0}  # a record without a timestamp
    tables.begin(0, ResumePoint(0, 50)).commit(ResumePoint(0, 60), *batch(0, 50, 59), later, {**last, "offset": 50})
    assert tables.snapshot().last_record(0) == later
    assert tables.snapshot().log_id(0, 0) == "1796000000000-4000000001"  # only offset 0 names the log
    # A batch committed without its last record leaves none for the new resume point, not an older one.
    tables.begin(0, ResumePoint(0, 60)).commit(ResumePoint(0, 70), *batch(0, 60, 69))
    assert tables.snapshot().last_record(0) is None

    tables.start_epoch(0, ResumePoint(0, 70))
    assert tables.snapshot().last_record(0) is None
    assert tables.snapshot().log_id(0, 0) == "1796000000000-4000000001"


def test_a_storage_url_of_another_kind_is_refused_with_the_kinds_it_takes(tmp_path: Path) -> None:
    from lambdaflow.core.errors import ConfigError

    with pytest.raises(ConfigError, match="local directory or on an S3-compatible store"):
        Storage.from_env({"LAMBDAFLOW_STORAGE_URL": "gs://bucket/x"}, tmp_path)
    with pytest.raises(ConfigError, match="names no bucket"):
        Storage.from_env({"LAMBDAFLOW_STORAGE_URL": "s3:///x"}, tmp_path)
    assert Storage.from_env({}, tmp_path).url == str((tmp_path / "tables").resolve())


def test_progress_reports_live_beside_the_tables_on_s3_and_under_the_data_dir_locally(
    storage: Storage, tmp_path: Path
) -> None:
    store = RawStore(tmp_path / "data", TOPIC, storage)
    assert store.read_status(1) is None and store.partitions(fallback=2) == range(2)
    store.take_status(1)
    store.write_status(1, {"partition": 1, "topic_partitions": 4, "watermark": "2026-12-01T10:00:00+00:00"})
    store.write_status(1, {"partition": 1, "topic_partitions": 4, "watermark": "2026-12-01T11:00:00+00:00"})
    assert store.read_status(1) == {"partition": 1, "topic_partitions": 4, "watermark": "2026-12-01T11:00:00+00:00"}
    assert store.partitions(fallback=2) == range(4)
    assert (tmp_path / "data" / "archiver").exists() is not storage.is_s3  # on S3, nothing on local disk

    if storage.is_s3:
        storage.filesystem().pipe_file(f"{store.status_uri}/status-1.json", b'{"partition": 1')
    else:
        store.status_path(1).write_text('{"partition": 1')
    where = f"{store.status_uri}/status-1.json" if storage.is_s3 else str(store.status_path(1))
    with pytest.raises(DamagedFile, match=re.escape(where)):
        store.read_status(1)


def readme_snippet(heading: str) -> str:
    """The first Python block after ``heading`` in the README."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    after = text[text.index(heading) :]
    return after[after.index("```python\n") + len("```python\n") : after.index("\n```", after.index("```python"))]


def test_the_readmes_duckdb_snippet_reads_the_events_table_of_one_version(tmp_path: Path) -> None:
    storage = Storage.from_env({}, tmp_path)
    tables = RawTables(storage, TOPIC)
    for first in (0, 100):
        events, rejects = batch(0, first, first + 99)
        tables.begin(0, ResumePoint(0, first)).commit(ResumePoint(0, first + 100), events, rejects)
    committed = Path(all_event_files(tables)[0])
    shutil.copy(committed, committed.with_name("part-00000-not-committed-c000.zstd.parquet"))  # a crash's leftover

    snippet = readme_snippet("### Reading the raw tables from other engines")
    assert 'DeltaTable("data/tables/raw/events/events")' in snippet
    namespace: dict = {}
    exec(snippet.replace("data/tables/raw/events/events", tables.events_uri), namespace)
    valid = len([offset for offset in range(200) if offset % 7])
    assert namespace["per_day"] == [(INGESTED.date(), valid, valid)]


def aged(path: Path, hours: float) -> Path:
    moment = time.time() - hours * 3600
    os.utime(path, (moment, moment))
    return path


def test_maintenance_removes_only_old_files_no_version_needs(storage: Storage, tmp_path: Path) -> None:
    tables = RawTables(storage, TOPIC)
    for partition in (0, 1):  # a file each: nothing to compact (tests/test_compaction.py)
        events, rejects = batch(partition, 0, 99)
        tables.begin(partition, ResumePoint(0, 0)).commit(ResumePoint(0, 100), events, rejects)
    settings = replace(
        Settings.from_env({"LAMBDAFLOW_DATA_DIR": str(tmp_path / "data"), "LAMBDAFLOW_TOPIC": TOPIC}), storage=storage
    )
    committed = all_event_files(tables)
    before = rows(storage, committed, 0, 10**9), dead_letter(storage, tables, 0)
    if not storage.is_s3:  # a store sets its objects' times itself; a directory's can be set back
        for uri in committed:
            aged(Path(uri), 24 * 30)  # old, but committed: never removed
        folder = Path(committed[0]).parent
        stray = aged(shutil.copy(committed[0], folder / "part-00000-crashed-c000.zstd.parquet"), 2)
        fresh = shutil.copy(committed[0], folder / "part-00000-in-flight-c000.zstd.parquet")

    with pytest.raises(InputError, match="at least 1:00:00"):
        maintain_tables(settings, keep=timedelta(minutes=59))
    looked = maintain_tables(settings, keep=timedelta(hours=1), dry_run=True)
    expected = 0 if storage.is_s3 else 1
    assert {r["table"]: r["removed_files"] for r in looked} == {"events": expected, "dead_letter": 0}
    if not storage.is_s3:
        assert stray.exists()  # a dry run removes nothing
    done = maintain_tables(settings, keep=timedelta(hours=1))
    assert {r["table"]: r["removed_files"] for r in done} == {"events": expected, "dead_letter": 0}

    if not storage.is_s3:
        assert not stray.exists() and fresh.exists()
    assert all_event_files(tables) == committed
    assert (rows(storage, committed, 0, 10**9), dead_letter(storage, tables, 0)) == before
    logs = storage.filesystem().ls(f"{tables.events_uri}/_delta_log") if storage.is_s3 else None
    names = [uri.rsplit("/", 1)[-1] for uri in logs] if logs else os.listdir(f"{tables.events_uri}/_delta_log")
    assert any(name.endswith(".checkpoint.parquet") for name in names)


@pytest.mark.slow
def test_the_maintenance_dag_compacts_and_vacuums_the_raw_tables_in_a_real_dag_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings.from_env({"LAMBDAFLOW_DATA_DIR": str(data_dir), "LAMBDAFLOW_TOPIC": TOPIC})
    tables = RawTables(settings.storage, TOPIC)
    for first in (0, 100):
        events, rejects = batch(0, first, first + 99)
        tables.begin(0, ResumePoint(0, first)).commit(ResumePoint(0, first + 100), events, rejects)
    committed = [Path(uri) for uri in all_event_files(tables)]
    before = rows(settings.storage, all_event_files(tables), 0, 10**9)
    stray = aged(shutil.copy(committed[0], committed[0].with_name("part-00000-crashed-c000.zstd.parquet")), 200)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_", "AIRFLOW"))}
    env.update({"LAMBDAFLOW_DATA_DIR": str(data_dir), "LAMBDAFLOW_TOPIC": TOPIC, **airflow_home.airflow_env(settings)})
    prepare = "from lambdaflow.batch import airflow_home; from lambdaflow.core.config import settings; "
    prepare += "airflow_home.prepare(settings())"
    for command in (
        [sys.executable, "-c", prepare],
        [sys.executable, "-m", "airflow", "dags", "test", "lambda_tables_maintenance"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert not stray.exists()  # older than the DAG's 168 hours, and in no version
    (merged,) = all_event_files(tables)  # the two batches' files, compacted into one
    assert rows(settings.storage, [merged], 0, 10**9) == before
    assert all(path.exists() for path in committed)  # merged away, kept for the readers of 168 hours


def test_a_commit_on_a_directory_is_fsynced_its_files_before_its_log_entry(tmp_path: Path, monkeypatch) -> None:
    tables = RawTables(Storage.from_env({}, tmp_path), TOPIC)
    tables.begin(0, ResumePoint(0, 0)).commit(ResumePoint(0, 100), *batch(0, 0, 99))
    before, version = set(all_event_files(tables)), tables.snapshot().version
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    tables.begin(0, ResumePoint(0, 100)).commit(ResumePoint(0, 200), *batch(0, 100, 199))

    events_log = f"{tables.events_uri}/_delta_log"
    entries = [path for path in synced if path.startswith(events_log + "/0")]
    assert entries == [f"{events_log}/{version + 1:020d}.json"]  # the new commit's entry, not older ones again
    added = set(all_event_files(tables)) - before
    folders = {str(Path(path).parent) for path in added}
    assert added and all(synced.index(path) < synced.index(entries[0]) for path in added | folders)
    assert synced.index(events_log) > synced.index(entries[0])
    assert any(path.startswith(f"{tables.dead_letter_uri}/_delta_log/0") for path in synced)  # its rejects too
