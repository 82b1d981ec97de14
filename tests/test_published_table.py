"""The published hours as a Delta table: each day replaced by one commit, on a directory and on S3; and
the manifest that names them, replaced only over the version its writer read."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from lambdaflow.batch import publish
from lambdaflow.batch.maintenance import maintain_tables
from lambdaflow.batch.published_table import PublishedHours
from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.documents import Changed, Documents
from lambdaflow.core.storage import Storage
from lambdaflow.ops.object_store import LocalS3Server

MONDAY, TUESDAY = date(2026, 11, 30), date(2026, 12, 1)


def exported(folder: Path, day: date, events: list[int], **more: int) -> Path:
    """A day's built hours as the dbt export writes them: one row per hour (of one country here)."""
    frame = pl.DataFrame(
        {
            "event_date": [day] * len(events),
            "event_hour": [datetime(day.year, day.month, day.day, hour) for hour in range(len(events))],
            "hour": list(range(len(events))),
            "country": ["DE"] * len(events),
            "events": events,
            **{name: [value] * len(events) for name, value in more.items()},
        },
        schema_overrides={"hour": pl.Int32},
    )
    path = folder / f"{day}-{len(list(folder.glob('*.parquet')))}.parquet"
    frame.write_parquet(path)
    return path


def table_rows(storage: Storage, table: PublishedHours) -> dict[date, list[int]]:
    rows = pl.from_arrow(DeltaTable(table.uri, storage_options=storage.delta_options()).to_pyarrow_table())
    assert isinstance(rows, pl.DataFrame)
    return {day: frame.sort("hour")["events"].to_list() for (day,), frame in rows.group_by("event_date")}


def read(storage: Storage, uri: str) -> list[int]:
    with storage.open(uri) as handle:
        return pl.read_parquet(handle).sort("hour")["events"].to_list()


def test_a_rebuilt_day_replaces_its_rows_in_one_commit_and_its_old_file_stays_for_readers(
    storage: Storage, tmp_path: Path
) -> None:
    table = PublishedHours(storage)
    assert table.open() is None and table.day_files(MONDAY) == []
    (first,) = table.replace_day(MONDAY, exported(tmp_path, MONDAY, [1, 2, 3]))
    (tuesday,) = table.replace_day(TUESDAY, exported(tmp_path, TUESDAY, [7]))
    version = table.open().version()

    (rebuilt,) = table.replace_day(MONDAY, exported(tmp_path, MONDAY, [1, 2, 3, 4]))
    assert rebuilt != first and table.open().version() == version + 1  # one commit
    assert table.day_files(MONDAY) == [rebuilt] and table.day_files(TUESDAY) == [tuesday]
    assert table_rows(storage, table) == {MONDAY: [1, 2, 3, 4], TUESDAY: [7]}
    # A query that read the manifest before the swap still reads the file it named, whole.
    assert read(storage, first) == [1, 2, 3] and read(storage, rebuilt) == [1, 2, 3, 4]


def test_a_day_without_events_has_no_file_and_a_new_metric_becomes_a_column(storage: Storage, tmp_path: Path) -> None:
    table = PublishedHours(storage)
    table.replace_day(MONDAY, exported(tmp_path, MONDAY, [5, 5]))
    assert table.replace_day(MONDAY, exported(tmp_path, MONDAY, [])) == []
    (tuesday,) = table.replace_day(TUESDAY, exported(tmp_path, TUESDAY, [2], signups=1))
    assert table_rows(storage, table) == {TUESDAY: [2]}
    assert "signups" in DeltaTable(table.uri, storage_options=storage.delta_options()).schema().to_arrow().names
    assert read(storage, tuesday) == [2]


def test_maintenance_keeps_a_replaced_day_file_for_the_kept_period(storage: Storage, tmp_path: Path) -> None:
    table = PublishedHours(storage)
    (first,) = table.replace_day(MONDAY, exported(tmp_path, MONDAY, [1]))
    table.replace_day(MONDAY, exported(tmp_path, MONDAY, [2]))
    settings = replace(Settings.from_env({"LAMBDAFLOW_DATA_DIR": str(tmp_path / "data")}), storage=storage)
    reports = {report["table"]: report for report in maintain_tables(settings, keep=timedelta(hours=1))}
    assert reports["published_hours"]["uri"] == table.uri and reports["published_hours"]["removed_files"] == 0
    assert read(storage, first) == [1]  # replaced a moment ago: a reader may still be on it


def test_two_hosts_publishing_at_once_each_keep_their_day_in_the_manifest(
    s3_server: LocalS3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host A reads the manifest; host B publishes its day; A's write is then refused (If-Match), and A
    swaps its day into B's manifest instead of writing over it."""
    bucket = s3_server.bucket(f"publish-{uuid.uuid4().hex[:12]}")
    env = {"LAMBDAFLOW_STORAGE_URL": f"{bucket}/lambdaflow", **s3_server.env()}
    host_a, host_b = (Settings.from_env({**env, "LAMBDAFLOW_DATA_DIR": str(tmp_path / name)}) for name in "ab")
    until = datetime(2026, 12, 2, tzinfo=UTC)
    real_read, interleaved = publish.read_manifest_for_update, []

    def read_then_host_b_publishes(documents):
        read = real_read(documents)
        if not interleaved:  # once: host B's own swap reads the manifest through here too
            interleaved.append(TUESDAY)
            publish.swap_in(host_b, TUESDAY, ["s3://b/tuesday.parquet"], until, {})
        return read

    monkeypatch.setattr(publish, "read_manifest_for_update", read_then_host_b_publishes)
    publish.swap_in(host_a, MONDAY, ["s3://a/monday.parquet"], until, {})
    manifest = read_manifest(host_a.documents)
    assert {day: entry["files"] for day, entry in manifest["days"].items()} == {
        MONDAY.isoformat(): ["s3://a/monday.parquet"],
        TUESDAY.isoformat(): ["s3://b/tuesday.parquet"],
    }
    assert manifest["boundary"] == until.isoformat()


def test_a_conditional_replacement_refuses_a_document_replaced_since_it_was_read(
    s3_server: LocalS3Server, tmp_path: Path
) -> None:
    bucket = s3_server.bucket(f"documents-{uuid.uuid4().hex[:12]}")
    storage = Storage.from_env({"LAMBDAFLOW_STORAGE_URL": f"{bucket}/lambdaflow", **s3_server.env()}, tmp_path)
    documents = Documents(tmp_path, storage)
    _, absent = documents.read_for_update("batch/manifest.json")
    documents.write_if_unchanged("batch/manifest.json", {"n": 1}, absent)
    with pytest.raises(Changed):  # created meanwhile by another writer
        documents.write_if_unchanged("batch/manifest.json", {"n": 2}, absent)
    read, version = documents.read_for_update("batch/manifest.json")
    documents.write("batch/manifest.json", {"n": 3})
    with pytest.raises(Changed):
        documents.write_if_unchanged("batch/manifest.json", {"n": read["n"] + 1}, version)
    assert documents.read("batch/manifest.json") == {"n": 3}
