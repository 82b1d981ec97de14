"""The pipeline on an S3-compatible store: the raw tables, the archivers' progress reports, the
speed layer's snapshots and progress reports, the published hours, the batch manifest, the build
records and the reconcile reports live on a local S3 server (moto's, started for the session and
stopped by its PID), and every reader of them (the batch build's completeness check and dbt, the
reconciliation, `query`, `status`, `archive --verify`) reads them there. None of them is on local
disk.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest

from lambdaflow.core.documents import Documents
from lambdaflow.core.layout import BATCH_MANIFEST, build_record_name, reconcile_report_name
from lambdaflow.core.storage import Storage
from lambdaflow.kafka.clients import ensure_topic
from lambdaflow.ops.object_store import LocalS3Server
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.cli_helpers import TopicWorld
from tests.ground_truth import METRICS, hourly_metrics
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.slow


class S3World(TopicWorld):
    """One topic archived to a bucket of its own."""

    day: date
    truth: dict
    malformed: int

    @property
    def documents(self) -> Documents:
        return Documents(self.data_dir, Storage.from_env(self.env, self.data_dir))

    def published(self) -> dict:
        """The built day's published hours, as {(date, hour, country): metrics}, read from the files the
        manifest on the store names."""
        manifest = self.documents.read(BATCH_MANIFEST)
        files = manifest["days"][self.day.isoformat()]["files"]
        assert files and all(uri.startswith(self.documents.storage.url + "/batch/published_hours/") for uri in files)
        columns = ", ".join(["event_date", "hour", "country", *METRICS])
        rows = self.documents.storage.duckdb().execute(f"select {columns} from read_parquet(?)", [files]).fetchall()
        return {(d, h, c): dict(zip(METRICS, values, strict=True)) for d, h, c, *values in rows}

    def daily_truth(self) -> dict:
        cells = [value for key, value in self.truth.items() if key[0] == self.day]
        return {metric: sum(cell[metric] for cell in cells) for metric in METRICS}


@pytest.fixture(scope="module")
def world(
    kafka_bootstrap: str, s3_server: LocalS3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3World]:
    world = S3World(kafka_bootstrap, tmp_path_factory.mktemp("on-s3"))
    bucket = s3_server.bucket(f"lake-{uuid.uuid4().hex[:12]}")
    world.env.update({"LAMBDAFLOW_STORAGE_URL": f"{bucket}/lambdaflow", **s3_server.env()})
    ensure_topic(kafka_bootstrap, world.topic, 3)
    midnight = datetime.combine(world.today, datetime.min.time(), UTC)
    world.day = world.today - timedelta(days=1)
    options = generator.Options(
        days=1, events_per_day=4_000, seed=20, until=midnight, duplicates=0.05, out_of_order=0.05, malformed=0.02
    )
    summary = produce(kafka_bootstrap, world.topic, 3, options)
    world.malformed = summary.malformed
    world.truth = hourly_metrics(read_all(kafka_bootstrap, world.topic, summary.messages))
    for command in ("archive", "stream"):
        done = world.lambdaflow(command, "--until-idle")
        assert done.exit_code == 0, done.stderr[-3000:]
    try:
        yield world
    finally:
        world.close()


def test_the_raw_tables_are_on_the_store_and_nowhere_on_local_disk(world: S3World) -> None:
    assert not (world.data_dir / "tables").exists() and not (world.data_dir / "archiver").exists()
    status = world.lambdaflow("status")
    assert status.exit_code == 0, status.stderr[-3000:]
    report = json.loads(status.stdout)
    assert [entry["archiver"]["lag"] for entry in report["partitions"]] == [0, 0, 0]  # reports on the store
    assert [entry["stream"]["lag"] for entry in report["partitions"]] == [0, 0, 0]
    assert report["dead_letter"]["messages"] == world.malformed > 0
    verified = world.lambdaflow("archive", "--verify")
    assert verified.exit_code == 0, verified.stdout + verified.stderr[-3000:]
    assert [json.loads(line)["partition"] for line in verified.stdout.splitlines()] == [0, 1, 2]


def test_the_speed_layer_serves_from_its_snapshots_on_the_store(world: S3World) -> None:
    snapshots = world.settings().speed_files.snapshots()
    assert len(snapshots) == 3 and all(uri.startswith("s3://") for uri in snapshots)
    assert not list(world.data_dir.rglob("*.parquet"))  # the state is local to the worker's host; no snapshot
    answered = world.lambdaflow("query", "--from", world.day.isoformat(), "--to", world.day.isoformat())
    assert answered.exit_code == 0, answered.stderr[-3000:]
    row = json.loads(answered.stdout)
    assert row["source"] == "realtime" and {metric: row[metric] for metric in METRICS} == world.daily_truth()


def test_a_day_built_from_the_store_equals_an_independent_computation(world: S3World) -> None:
    for _build in range(2):  # the second build checks the files the first read, on the store
        built = world.batch("--date", world.day.isoformat())
        assert built.exit_code == 0, built.stderr[-3000:]
        assert world.published() == {key: value for key, value in world.truth.items() if key[0] == world.day}
    answered = world.lambdaflow("query", "--from", world.day.isoformat(), "--to", world.day.isoformat())
    assert answered.exit_code == 0, answered.stderr[-3000:]
    row = json.loads(answered.stdout)
    assert {metric: row[metric] for metric in METRICS} == world.daily_truth()
    assert row["source"] == "batch"
    assert world.documents.read(build_record_name(world.day))["raw_files"]
    assert not (world.data_dir / "batch").exists() and not (world.data_dir / "tables").exists()


def test_reconcile_reads_the_raw_files_on_the_store(world: S3World) -> None:
    built = world.batch("--date", world.day.isoformat())
    assert built.exit_code == 0, built.stderr[-3000:]
    result = world.lambdaflow("reconcile", "--date", world.day.isoformat())
    assert result.exit_code == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    truth = world.daily_truth()
    assert {row["metric"]: (row["batch"], row["speed"], row["difference"]) for row in rows} == {
        metric: (truth[metric], truth[metric], 0) for metric in METRICS
    }
    assert world.documents.read(reconcile_report_name(world.day)) == rows
    assert not (world.data_dir / "batch").exists()
