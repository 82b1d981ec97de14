"""The speed layer's snapshots and progress reports on an S3 store: one live generation, which a
replay replaces with one PUT, and every host finds the same files."""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl

from lambdaflow.core.speed_files import SpeedFiles
from lambdaflow.core.storage import Storage
from lambdaflow.ops.object_store import LocalS3Server
from stream_worker.paths import SpeedPaths

TOPIC = "events"


def on_store(server: LocalS3Server, data_dir: Path) -> Storage:
    bucket = server.bucket(f"speed-{uuid.uuid4().hex[:12]}")
    return Storage.from_env({"LAMBDAFLOW_STORAGE_URL": f"{bucket}/lambdaflow", **server.env()}, data_dir)


def counted(files: SpeedFiles, uri: str) -> list[int]:
    with files.storage.open(uri) as handle:
        return pl.read_parquet(handle)["events"].to_list()


def test_two_hosts_publish_into_one_live_generation_and_a_replay_replaces_it(
    s3_server: LocalS3Server, tmp_path: Path
) -> None:
    storage = on_store(s3_server, tmp_path)
    first = SpeedPaths(tmp_path / "host-a", TOPIC, storage=storage).live()
    second = SpeedPaths(tmp_path / "host-b", TOPIC, storage=storage).live()  # its own local generation
    assert first.generation == second.generation == first.root.resolve().name
    first.publish_snapshot(0, pl.DataFrame({"events": [1]}))
    second.publish_snapshot(1, pl.DataFrame({"events": [2]}))
    first.publish_snapshot(0, pl.DataFrame({"events": [3]}))  # replaced by one PUT

    reader = SpeedFiles(tmp_path / "server", TOPIC, storage)
    live = reader.snapshots()
    assert [uri.rsplit("/", 1)[-1] for uri in live] == ["partition-0.parquet", "partition-1.parquet"]
    assert [counted(reader, uri) for uri in live] == [[3], [2]]
    assert set(reader.snapshot_ages()) == {"0", "1"} and all(age < 60 for age in reader.snapshot_ages().values())

    for replay, events in (("replay-1", 10), ("replay-2", 20)):
        replayed = SpeedPaths(tmp_path / "host-a", TOPIC, root=tmp_path / replay, storage=storage)
        replayed.publish_snapshot(0, pl.DataFrame({"events": [events]}))
        assert [counted(reader, uri) for uri in reader.snapshots()][0] != [events]  # not live until switched
        reader.switch_to(replay)
        assert [counted(reader, uri) for uri in reader.snapshots()] == [[events]]
    # The generation before the live one stays for the queries that listed it; older ones go.
    assert sorted(storage.list_names(storage.table_uri("speed", TOPIC, "generations"))) == ["replay-1", "replay-2"]


def test_progress_reports_are_found_by_any_host(s3_server: LocalS3Server, tmp_path: Path) -> None:
    storage = on_store(s3_server, tmp_path)
    worker = SpeedPaths(tmp_path / "host-a", TOPIC, storage=storage).live()
    for partition in (2, 0):
        worker.write_status(partition, {"partition": partition, "pid": 7, "host": "a"})
    reader = SpeedFiles(tmp_path / "server", TOPIC, storage)
    assert reader.statuses() == {0: {"partition": 0, "pid": 7, "host": "a"}, 2: {"partition": 2, "pid": 7, "host": "a"}}
    assert reader.read_status(1) is None
    assert not list((tmp_path / "host-a").rglob("status-*.json"))
