"""The batch layer end to end: real archiver, real `lambda_batch` runs, real dbt builds on DuckDB."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from unittest.mock import ANY

import duckdb
import polars as pl
import pytest

from lambdaflow.batch import airflow_home
from lambdaflow.core import metrics as metric_definitions
from lambdaflow.core.boundary import published_files
from lambdaflow.kafka import clients
from lambdaflow.kafka.clients import ensure_topic
from lambdaflow.serving.query import Question, answer
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from stream_worker.paths import SpeedPaths
from stream_worker.state import PartitionState
from tests.cli_helpers import TopicWorld
from tests.ground_truth import METRICS, hourly_metrics
from tests.kafka_helpers import read_all
from tests.worker_helpers import WorkerProcess


class BatchWorld(TopicWorld):
    """One archived topic and one Airflow home, shared by the tests of this module."""

    def __init__(self, bootstrap: str, root: Path) -> None:
        super().__init__(bootstrap, root)
        self.closed_days = [self.today - timedelta(days=n) for n in (3, 2, 1)]

    def answer_for(self, day: date) -> dict:
        """The served daily row for ``day``, answered in this process."""
        (row,) = answer(self.settings(), Question(day, day))
        return row

    def manifest(self) -> dict:
        return json.loads((self.data_dir / "batch" / "manifest.json").read_text())

    def published(self, day: date) -> dict:
        """The published hours of a day, as {(date, hour, country): metrics}."""
        files = published_files(self.manifest()["days"][day.isoformat()], self.data_dir)
        if not files:  # a day without events
            return {}
        rows = duckdb.execute(
            f"select event_date, hour, country, {', '.join(METRICS)} from read_parquet(?)", [files]
        ).fetchall()
        return {(d, h, c): dict(zip(METRICS, values, strict=False)) for d, h, c, *values in rows}

    def warehouse_checksum(self, day: date) -> str:
        with duckdb.connect(str(self.data_dir / "warehouse" / "lambdaflow.duckdb"), read_only=True) as con:
            rows = con.execute(
                "select * from fct_hourly_metrics where event_date = ? order by event_hour, country", [day]
            ).fetchall()
        return hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.fixture(scope="module")
def world(kafka_bootstrap, tmp_path_factory) -> Iterator[BatchWorld]:
    world = BatchWorld(kafka_bootstrap, tmp_path_factory.mktemp("batch"))
    ensure_topic(kafka_bootstrap, world.topic, 3)
    midnight = datetime.combine(world.today, datetime.min.time(), UTC)
    history = produce(
        kafka_bootstrap,
        world.topic,
        3,
        generator.Options(
            days=3,
            events_per_day=6_000,
            seed=81,
            until=midnight,
            duplicates=0.05,
            out_of_order=0.05,
            late=0.01,
            malformed=0.01,
        ),
    )
    today = produce(
        kafka_bootstrap,
        world.topic,
        3,
        generator.Options(
            days=0,
            events_per_day=6_000,
            seed=82,
            until=datetime.now(UTC),
            duplicates=0.05,
        ),
    )
    poisoned = send_poisoned_messages(kafka_bootstrap, world.topic, world.closed_days[1])
    world.messages = history.messages + today.messages + poisoned
    archived = world.lambdaflow("archive", "--until-idle")
    assert archived.exit_code == 0, archived.stderr[-3000:]
    counted = world.lambdaflow("stream", "--until-idle")
    assert counted.exit_code == 0, counted.stderr[-3000:]
    world.malformed = history.malformed + today.malformed + 2  # the two orders of 2**63 - 1
    world.truth = hourly_metrics(read_all(kafka_bootstrap, world.topic, world.messages))
    try:
        yield world
    finally:
        world.close()  # the long-lived process its builds ran in


def send_poisoned_messages(bootstrap: str, topic: str, day: date) -> int:
    """What no message may do to a layer (invariants 6 and 11): two orders of 2**63 - 1 cents in one
    hour of ``day`` would wrap a 64-bit sum; events stamped in 2030 on every partition, their
    occurred_at and Kafka timestamp both, would move the watermarks past every day to come, so that
    today would count as complete. Returns how many were sent."""
    producer = clients.producer(bootstrap)
    future = datetime(2030, 6, 1, 12, tzinfo=UTC)
    nine = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=9)
    moments = [nine, nine + timedelta(minutes=30)]  # one hour, one country: summed, they would wrap
    for n, moment in enumerate(moments):
        order = {
            "event_id": f"poison-{n}",
            "event_type": "order",
            "user_id": "poison",
            "country": "US",
            "occurred_at": moment.isoformat(),
            "amount_cents": 2**63 - 1,
        }
        producer.send(topic, key=b"poison", value=json.dumps(order).encode())
    travellers = [f"time-traveller-{n}" for n in range(12)]  # every partition gets some
    for user in travellers:
        signup = {
            "event_id": f"from-2030-{user}",
            "event_type": "signup",
            "user_id": user,
            "occurred_at": future.isoformat(),
        }
        producer.send(
            topic, key=user.encode(), value=json.dumps(signup).encode(), timestamp_ms=int(future.timestamp() * 1000)
        )
    producer.flush()
    producer.close()
    return len(moments) + len(travellers)


def truth_for(world: BatchWorld, day: date, before_hour: int = 24) -> dict:
    return {key: value for key, value in world.truth.items() if key[0] == day and key[1] < before_hour}


def test_each_closed_day_equals_an_independent_computation_hour_by_hour(world) -> None:
    for day in world.closed_days:
        result = world.batch("--date", day.isoformat(), verbose=True)
        assert result.exit_code == 0, result.stderr[-3000:]
        assert json.loads(result.stdout)["days"][day.isoformat()]["built_until"] == (
            datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC).isoformat()
        )
        assert "Done. PASS=" in result.stderr and "ERROR=0" in result.stderr  # dbt's data and unit tests
        assert world.published(day) == truth_for(world, day)
    midnight = datetime.combine(world.today, datetime.min.time(), UTC)
    assert world.manifest()["boundary"] == midnight.isoformat()
    # A day built long before the others neither moves the boundary back nor holds it (see the next
    # build of today): the boundary grows from where it stands, not from the earliest built day.
    old = world.today - timedelta(days=20)
    result = world.batch("--date", old.isoformat())
    assert result.exit_code == 0, result.stderr[-3000:]
    assert world.manifest()["boundary"] == midnight.isoformat()
    assert world.published(old) == {}  # a day with no raw files is an empty day


def test_building_a_day_twice_gives_the_same_table(world) -> None:
    day = world.closed_days[-1]
    first = world.warehouse_checksum(day)
    published_before = world.published(day)
    result = world.batch("--date", day.isoformat())
    assert result.exit_code == 0, result.stderr[-3000:]
    assert world.warehouse_checksum(day) == first
    assert world.published(day) == published_before
    # Without -v, a line per task on stderr; Airflow's and dbt's log in the data directory's logs.
    tasks = [line for line in result.stderr.splitlines() if line.startswith("lambda_batch ")]
    assert [line.split(":")[0] for line in tasks] == [
        "lambda_batch wait_for_complete_day",
        "lambda_batch build_day",
        "lambda_batch reconcile_day",
    ]
    assert all(": success in " in line for line in tasks)
    assert "[DAG TEST]" not in result.stderr and "Done. PASS=" not in result.stderr
    assert "Done. PASS=" in (world.data_dir / "logs" / "batch.log").read_text()


def test_today_builds_the_complete_hours_so_far_and_moves_the_boundary(world) -> None:
    before = world.manifest()["boundary"]
    served_before = world.answer_for(world.today)
    assert served_before["source"] == "realtime"
    result = world.batch("--today", verbose=True)
    now = datetime.now(UTC)
    if now.hour == 0:  # no hour of today is over yet
        assert result.exit_code == 1
        assert "no hour of" in result.stderr
        return
    assert result.exit_code == 0, result.stderr[-3000:]
    manifest = json.loads(result.stdout)
    built_until = datetime.fromisoformat(manifest["days"][world.today.isoformat()]["built_until"])
    assert built_until.minute == 0 and built_until.date() == world.today and built_until.hour >= 1
    assert built_until <= now  # only hours that are over: the event stamped in 2030 completes nothing
    assert manifest["boundary"] == built_until.isoformat() > before
    assert world.published(world.today) == truth_for(world, world.today, before_hour=built_until.hour)
    # The same numbers, now partly from the batch layer.
    assert world.answer_for(world.today) == {**served_before, "source": "mixed"}


def test_a_rebuild_of_today_with_more_lateness_still_covers_every_hour_before_the_boundary(world) -> None:
    boundary = datetime.fromisoformat(world.manifest()["boundary"])
    if boundary.date() != world.today or boundary.hour == 0:
        pytest.skip("today's batch built no hour (it is just past midnight): there is no boundary inside today")
    served_before = world.answer_for(world.today)
    # With an hour more of allowed lateness, the complete hours end an hour or two before the boundary
    # (at 01:xx, none is complete: the run must still build up to the boundary, not refuse).
    result = world.lambdaflow("batch", "--today", env={**world.env, "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "61"})
    assert result.exit_code == 0, result.stderr[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["boundary"] == boundary.isoformat()  # never back
    assert manifest["days"][world.today.isoformat()]["built_until"] == boundary.isoformat()
    assert world.answer_for(world.today) == served_before  # no hour left to neither layer


@pytest.mark.slow  # four Airflow CLI processes and two concurrent builds: a minute
def test_two_batches_at_once_both_finish_and_delete_no_run_triggered_in_the_ui(world, tmp_path) -> None:
    if datetime.now(UTC).hour == 0:
        pytest.skip("no hour of today is complete yet")
    airflow_env = {**world.env, **airflow_home.airflow_env(world.settings())}

    def airflow(*args: str) -> str:
        """Airflow's CLI; its last line of output (it logs to stdout before its result)."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=airflow_env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    # Airflow's database with the DAGs in it, as the first `lambdaflow batch` leaves it (this test may
    # run before any other of the module).
    prepare = "from lambdaflow.batch import airflow_home; from lambdaflow.core.config import settings; "
    subprocess.run([sys.executable, "-c", prepare + "airflow_home.prepare(settings())"], env=world.env, check=True)
    airflow("dags", "reserialize")
    # The README's way to trigger the manual batch in the UI: no logical date. No scheduler runs here,
    # so the run stays queued; what matters is that it stays.
    airflow("dags", "trigger", "lambda_batch_today")
    (queued,) = [
        run["run_id"]
        for run in json.loads(airflow("dags", "list-runs", "lambda_batch_today", "-o", "json"))
        if run["state"] == "queued"
    ]
    batches = [
        subprocess.Popen(
            [sys.executable, "-m", "lambdaflow", "batch", "--today"],
            env=world.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=(tmp_path / f"batch-{n}.log").open("w"),
            text=True,
        )
        for n in range(2)
    ]
    for n, batch in enumerate(batches):
        out, _ = batch.communicate(timeout=600)
        assert batch.returncode == 0, (tmp_path / f"batch-{n}.log").read_text()[-3000:]
        assert json.loads(out)["boundary"] == world.manifest()["boundary"]
    runs = {
        run["run_id"]: run["state"]
        for run in json.loads(airflow("dags", "list-runs", "lambda_batch_today", "-o", "json"))
    }
    assert runs[queued] == "queued"
    assert list(runs.values()).count("success") >= 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-13-01", "'2026-13-01' is not a date of the calendar"),
        ("../../etc", "'../../etc' is not a date: use YYYY-MM-DD, e.g. 2026-11-26"),
        ("", "'' is not a date: use YYYY-MM-DD, e.g. 2026-11-26"),
        ("2026-11-26; drop table fct_hourly_metrics", "is not a date: use YYYY-MM-DD"),
    ],
)
def test_an_invalid_date_fails_clearly_and_writes_nothing(world, value: str, message: str) -> None:
    watched = [world.data_dir / "batch" / "manifest.json", world.data_dir / "warehouse" / "lambdaflow.duckdb"]
    before = {path: path.stat().st_mtime_ns for path in watched if path.exists()}
    result = world.lambdaflow("batch", "--date", value)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("lambdaflow: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert {path: path.stat().st_mtime_ns for path in watched if path.exists()} == before


def test_a_day_that_is_not_complete_fails_fast(world) -> None:
    result = world.lambdaflow("batch", "--date", world.today.isoformat(), timeout=120)
    assert result.exit_code == 1
    assert f"day {world.today} is not complete yet" in result.stderr


def test_make_docs_builds_and_serves_the_dbt_docs_site(world, tmp_path) -> None:
    import signal
    import time
    import urllib.request

    from lambdaflow.kafka.broker import free_port

    port = free_port()
    project = Path(__file__).resolve().parents[1]
    # The world's data directory as a user may name it: relative to the checkout, with spaces.
    spaced = tmp_path / "data dir with spaces"
    spaced.symlink_to(world.data_dir)
    env = {**world.env, "LAMBDAFLOW_DATA_DIR": os.path.relpath(spaced, project)}
    server = subprocess.Popen(
        ["make", "--no-print-directory", "docs", f"DOCS_PORT={port}"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        catalog = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/catalog.json", timeout=5) as response:
                    catalog = json.loads(response.read())
                break
            except OSError:
                time.sleep(1)
        assert catalog is not None, server.stdout.read().decode()[-3000:] if server.poll() is not None else "timeout"
        assert "model.lambdaflow.fct_hourly_metrics" in catalog["nodes"]
        columns = catalog["nodes"]["model.lambdaflow.fct_hourly_metrics"]["columns"]
        for metric in metric_definitions.defined():  # each metric documented from its definition
            assert columns[metric.name]["comment"] == metric.description
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/manifest.json", timeout=5) as response:
            manifest = json.loads(response.read())
        hourly = manifest["nodes"]["model.lambdaflow.fct_hourly_metrics"]
        assert "one row per UTC hour and country" in hourly["description"]
        for model in ("fct_hourly_metrics", "fct_daily_metrics", "serving_hourly_metrics"):
            node_id = f"model.lambdaflow.{model}"
            declared = manifest["nodes"][node_id]["columns"]
            built = catalog["nodes"][node_id]["columns"]
            for metric in metric_definitions.defined():  # the page shows the manifest's, beside the catalog's type
                assert declared[metric.name]["description"] == metric.description, (model, metric.name)
                assert metric.name in built, (model, metric.name)
        serving = manifest["nodes"]["model.lambdaflow.serving_hourly_metrics"]
        assert sorted(serving["depends_on"]["nodes"]) == [
            "source.lambdaflow.published.batch_hours",
            "source.lambdaflow.published.speed_snapshots",
        ]
        report = manifest["exposures"]["exposure.lambdaflow.reconciliation_report"]
        assert "explained by late events" in report["description"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the docs server it started, by their own group
        server.wait(timeout=30)


# Serving over both layers (after the builds above)


def daily_truth(world: BatchWorld, day: date, country: str | None = None) -> dict:
    cells = [v for k, v in world.truth.items() if k[0] == day and (country is None or k[2] == country)]
    return {m: sum(cell[m] for cell in cells) for m in METRICS}


def test_query_answers_each_day_from_its_layer_and_exactly(world) -> None:
    first = world.closed_days[0]
    result = world.lambdaflow("query", "--from", first.isoformat(), "--to", world.today.isoformat())
    assert result.exit_code == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["event_date"] for row in rows] == [d.isoformat() for d in [*world.closed_days, world.today]]
    boundary = datetime.fromisoformat(world.manifest()["boundary"])
    for row in rows:
        day = date.fromisoformat(row["event_date"])
        assert list(row) == ["event_date", *METRICS, "source"]
        assert {m: row[m] for m in METRICS} == daily_truth(world, day)
        if day < world.today:
            assert row["source"] == "batch"
        else:
            assert row["source"] == ("mixed" if boundary.date() == world.today and boundary.hour > 0 else "realtime")


def test_query_hourly_for_one_country_never_serves_an_hour_twice(world) -> None:
    day = world.closed_days[-1]
    result = world.lambdaflow(
        "query", "--from", day.isoformat(), "--to", world.today.isoformat(), "--hourly", "--country", "DE"
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    keys = [(row["event_date"], row["hour"]) for row in rows]
    assert len(keys) == len(set(keys))
    expected = {
        (k[0].isoformat(), k[1]): v for k, v in world.truth.items() if k[2] == "DE" and k[0] in (day, world.today)
    }
    assert {(row["event_date"], row["hour"]): {m: row[m] for m in METRICS} for row in rows} == expected
    boundary = datetime.fromisoformat(world.manifest()["boundary"])
    for row in rows:
        start = datetime.fromisoformat(row["event_date"]).replace(tzinfo=UTC) + timedelta(hours=row["hour"])
        assert row["source"] == ("batch" if start < boundary else "realtime")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-11-27", "--to", "2026-11-20"], "--to 2026-11-20 is before --from 2026-11-27"),
        (["--from", "2026-02-30", "--to", "2026-03-01"], "--from '2026-02-30' is not a date of the calendar"),
        (["--from", "yesterday", "--to", "2026-03-01"], "--from 'yesterday' is not a date"),
        (["--from", "2026-11-20", "--to", "2026-11-21", "--country", "DE' or '1'='1"], "is not two capital letters"),
        (["--from", "2000-01-01", "--to", "2026-11-21"], "is too long"),
    ],
)
def test_bad_query_input_gets_one_clear_line(world, args, message) -> None:
    result = world.lambdaflow("query", *args)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("lambdaflow: error: ") and message in lines[-1]


def test_status_shows_both_layers_caught_up_the_boundary_and_the_dead_letter(world) -> None:
    result = world.lambdaflow("status")
    assert result.exit_code == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["boundary"] == world.manifest()["boundary"]
    assert [p["partition"] for p in report["partitions"]] == [0, 1, 2]
    for entry in report["partitions"]:
        assert entry["archiver"]["lag"] == 0
        assert entry["stream"]["lag"] == 0
    assert report["dead_letter"]["messages"] == world.malformed
    table = world.lambdaflow("status", "--format", "table")
    assert table.exit_code == 0 and "archive_lag" in table.stdout


def test_reconcile_finds_no_difference_between_the_layers(world) -> None:
    day = world.closed_days[0]
    result = world.lambdaflow("reconcile", "--date", day.isoformat())
    assert result.exit_code == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["metric"] for row in rows] == list(METRICS)
    truth = daily_truth(world, day)
    for row in rows:
        assert row["batch"] == row["speed"] == truth[row["metric"]]
        assert row["difference"] == 0 and row["hours_differing"] == []
    assert json.loads((world.data_dir / "batch" / "reconcile" / f"{day}.json").read_text()) == [
        {**row, "reconciled_at": ANY} for row in rows
    ]
    unbuilt = world.lambdaflow("reconcile", "--date", (day - timedelta(days=30)).isoformat())
    assert unbuilt.exit_code == 1 and "has not been built by the batch layer yet" in unbuilt.stderr


def test_an_unexplained_difference_fails_reconciliation_naming_the_metric_and_hour(world) -> None:
    day = world.closed_days[0]
    published = world.data_dir / world.manifest()["days"][day.isoformat()]["file"]
    original = published.read_bytes()
    try:  # one order fewer in the batch layer's 07:00, as if the build had lost it
        frame = pl.read_parquet(published)
        first = frame.with_row_index().filter((pl.col("hour") == 7) & (pl.col("orders") > 0))["index"][0]
        frame.with_columns(
            pl.when(pl.int_range(pl.len()) == first)
            .then(pl.col("orders") - 1)
            .otherwise(pl.col("orders"))
            .alias("orders")
        ).write_parquet(published)
        result = world.lambdaflow("reconcile", "--date", day.isoformat())
    finally:
        published.write_bytes(original)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"lambdaflow: error: {day}: the layers differ beyond what late events and the speed layer's lag "
        "explain (threshold 0): orders by +1 (hours [7])"
    )
    # Every day the DAG built was reconciled by its reconcile_day task, within the threshold.
    for built in world.closed_days:
        report = json.loads((world.data_dir / "batch" / "reconcile" / f"{built}.json").read_text())
        assert [row["metric"] for row in report] == list(METRICS)


def send_late_events(world, start: datetime, numbers: range) -> None:
    """Events of the day starting at ``start``, one every 4 minutes, for users late-0 to late-39."""
    producer = clients.producer(world.bootstrap)
    for n in numbers:
        user = f"late-{n % 40}"
        event = {
            "event_id": f"late-{n}",
            "event_type": ("order", "page_view", "signup")[n % 3],
            "user_id": user,
            "occurred_at": (start + timedelta(minutes=4 * n + 1)).isoformat(),
            "country": "BR",
        }
        if event["event_type"] == "order":
            event["amount_cents"] = 1000 + n
        producer.send(world.topic, key=user.encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()


def compact(world) -> int:
    """`lambdaflow maintain`: the events files it merged."""
    done = world.lambdaflow("maintain")
    assert done.exit_code == 0, done.stderr[-3000:]
    return next(row["compacted_files"] for row in map(json.loads, done.stdout.splitlines()) if row["table"] == "events")


def test_late_events_for_a_built_day_are_reported_rebuilt_and_served(world) -> None:
    """The late events arrive in two parts, each archived apart: two late files per partition, which
    compaction merges; after the rebuild it merges them with the files the first build read."""
    day = world.closed_days[-1]  # the speed layer still holds it (a day behind the boundary)
    start = datetime.combine(day, datetime.min.time(), UTC)
    for part in (range(150), range(150, 300)):
        send_late_events(world, start, part)
        caught_up = world.lambdaflow("archive", "--until-idle")
        assert caught_up.exit_code == 0, caught_up.stderr[-3000:]
    world.messages += 300
    counted = world.lambdaflow("stream", "--until-idle")
    assert counted.exit_code == 0, counted.stderr[-3000:]
    world.truth = hourly_metrics(read_all(world.bootstrap, world.topic, world.messages))

    assert json.loads(world.lambdaflow("status").stdout)["late_days"] == {day.isoformat(): 6}
    assert compact(world) == 6  # each partition's two late files become one, apart from the files built
    assert json.loads(world.lambdaflow("status").stdout)["late_days"] == {day.isoformat(): 3}
    report = world.lambdaflow("reconcile", "--date", day.isoformat())
    assert report.exit_code == 0, report.stderr[-3000:]
    rows = {row["metric"]: row for row in map(json.loads, report.stdout.splitlines())}
    truth = daily_truth(world, day)
    assert rows["events"]["late_events"] == 300
    for metric, row in rows.items():
        assert row["speed"] == truth[metric]
        assert row["difference"] == row["explained_by_late_events"] == truth[metric] - row["batch"]
        assert row["explained_by_speed_lag"] == row["unexplained"] == 0
    assert rows["events"]["difference"] == 300

    rebuilt = world.batch("--late")
    assert rebuilt.exit_code == 0, rebuilt.stderr[-3000:]
    assert json.loads(rebuilt.stdout)["rebuilt"] == [day.isoformat()]
    assert world.published(day) == truth_for(world, day)
    assert {m: world.answer_for(day)[m] for m in METRICS} == truth
    again = [json.loads(line) for line in world.lambdaflow("reconcile", "--date", day.isoformat()).stdout.splitlines()]
    assert all(row["difference"] == 0 and row["late_files"] == 0 for row in again)
    assert json.loads(world.lambdaflow("status").stdout)["late_days"] == {}
    assert compact(world) == 6  # the late files, read by the rebuild now, merge with the others
    assert json.loads(world.lambdaflow("status").stdout)["late_days"] == {}
    # the files the rebuild read are gone, their rows are not: the day reconciles
    again = [json.loads(line) for line in world.lambdaflow("reconcile", "--date", day.isoformat()).stdout.splitlines()]
    assert all(row["difference"] == 0 and row["unexplained"] == 0 for row in again) and len(again) == len(METRICS)
    # a build record from before builds counted rows: the files that left the table are not checked
    path = world.data_dir / "batch" / "builds" / f"{day}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({key: value for key, value in record.items() if key not in ("rows", "covered")}))
    older = world.lambdaflow("reconcile", "--date", day.isoformat())
    assert older.exit_code == 0 and "predates row counts" in older.stderr, older.stderr[-3000:]


# Readers never wait on writers (last: it adds events to the topic)


def live_events(bootstrap: str, topic: str, stop: threading.Event, sent: list[int]) -> None:
    """Events stamped now, about 200 a second, until ``stop`` is set; counts them in ``sent``."""
    producer = clients.producer(bootstrap)
    sequence = 0
    try:
        while not stop.is_set():
            for _ in range(20):
                sequence += 1
                user = f"live-{sequence % 300}"
                kind = ("page_view", "login", "order", "signup")[sequence % 4]
                event = {
                    "event_id": f"live-{sequence}",
                    "event_type": kind,
                    "user_id": user,
                    "occurred_at": datetime.now(UTC).isoformat(),
                    "country": "FR",
                }
                if kind == "order":
                    event["amount_cents"] = 100 + sequence % 900
                producer.send(topic, key=user.encode(), value=json.dumps(event).encode())
            time.sleep(0.1)
        producer.flush()
    finally:
        producer.close()
        sent.append(sequence)


def test_queries_while_dbt_and_the_stream_worker_write_always_see_whole_hours(world, tmp_path) -> None:
    settings = world.settings()
    first, rebuilt = world.closed_days[0], world.closed_days[-1]
    closed = {day.isoformat(): daily_truth(world, day) for day in world.closed_days}
    rebuilt_hours: dict[int, dict] = {}
    for (_, hour, _), cell in truth_for(world, rebuilt).items():
        totals = rebuilt_hours.setdefault(hour, dict.fromkeys(METRICS, 0))
        for m in METRICS:
            totals[m] += cell[m]
    file_before = world.manifest()["days"][rebuilt.isoformat()]["file"]

    worker = WorkerProcess("stream", world.env, tmp_path / "stream.log")
    stop, sent = threading.Event(), []
    producer = threading.Thread(target=live_events, args=(world.bootstrap, world.topic, stop, sent))
    producer.start()
    # The rebuild runs in the world's long-lived `lambdaflow` process (Airflow and dbt imported once),
    # beside this one's queries and the stream worker's commits.
    built: list = []
    build = threading.Thread(target=lambda: built.append(world.batch("--date", rebuilt.isoformat())))
    build.start()
    latencies, today_events, files_seen = [], [], set()
    deadline = time.monotonic() + 300

    def stream_worker_counted_meanwhile() -> bool:
        return len(today_events) > 1 and today_events[-1] > today_events[0]

    try:
        # 200 queries at least, for as long as the rebuild runs and until the stream worker has counted
        # live events meanwhile (it joins its group first).
        while len(latencies) < 200 or build.is_alive() or not stream_worker_counted_meanwhile():
            assert time.monotonic() < deadline, "the rebuild did not end, or no live event was counted, in 5 minutes"
            started = time.perf_counter()
            if len(latencies) % 5 == 0:  # every fifth: the day being rebuilt, hour by hour
                rows = answer(settings, Question(rebuilt, rebuilt, hourly=True))
                latencies.append(time.perf_counter() - started)
                assert {row["hour"]: {m: row[m] for m in METRICS} for row in rows} == rebuilt_hours
            else:
                rows = answer(settings, Question(first, world.today))
                latencies.append(time.perf_counter() - started)
                for row in rows[:-1]:
                    assert {m: row[m] for m in METRICS} == closed[row["event_date"]], row
                today_events.append(rows[-1]["events"])
            files_seen.add(world.manifest()["days"][rebuilt.isoformat()]["file"])
        assert built[0].exit_code == 0, built[0].stderr[-3000:]
    finally:
        stop.set()
        producer.join()
        build.join()
        worker.ensure_stopped()
    # The rebuild replaced the day's file while the queries ran, and they never saw it half written.
    assert file_before in files_seen and len(files_seen) == 2
    assert today_events == sorted(today_events) and today_events[-1] > today_events[0]

    counted = world.lambdaflow("stream", "--until-idle")
    assert counted.exit_code == 0, counted.stderr[-3000:]
    truth = hourly_metrics(read_all(world.bootstrap, world.topic, world.messages + sent[0]))
    today = {m: sum(v[m] for k, v in truth.items() if k[0] == world.today) for m in METRICS}
    assert {m: world.answer_for(world.today)[m] for m in METRICS} == today
    latencies.sort()
    print(
        f"{len(latencies)} queries: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms"
    )


def test_a_rebuild_after_the_speed_layer_dropped_the_day_is_not_compared_again(world) -> None:
    day = world.closed_days[0]  # reconciled by its build above, and older than the speed layer keeps
    paths = SpeedPaths(world.data_dir, world.topic)
    for partition in range(3):  # what the running worker does once the day is reconciled and old enough
        state = PartitionState(paths.state_file(partition), partition)
        try:
            state.drop_days_before(day + timedelta(days=1))
            paths.publish_snapshot(partition, state.snapshot())
        finally:
            state.close()

    result = world.batch("--date", day.isoformat())

    assert result.exit_code == 0, result.stderr[-3000:]
    report = json.loads((world.data_dir / "batch" / "reconcile" / f"{day}.json").read_text())
    assert {row["metric"]: row["batch"] for row in report} == daily_truth(world, day)
    for row in report:
        assert row["speed"] is None and row["unexplained"] == 0
        assert row["note"].startswith(f"rebuilt after the speed layer dropped {day}")
    assert {m: world.answer_for(day)[m] for m in METRICS} == daily_truth(world, day)


def test_tables_for_people_show_money_mark_the_boundary_and_give_each_metric_a_row(world) -> None:
    day = world.closed_days[-1]
    args = ("query", "--from", day.isoformat(), "--to", world.today.isoformat(), "--hourly")
    rows = [json.loads(line) for line in world.lambdaflow(*args).stdout.splitlines()]
    table = world.lambdaflow(*args, "--format", "table")
    assert table.exit_code == 0, table.stderr[-2000:]
    lines = table.stdout.splitlines()
    assert "revenue_cents" not in table.stdout and any("revenue" in line for line in lines[:3])
    assert all(f"{row['revenue_cents'] / 100:,.2f}" in table.stdout for row in rows)
    boundary = datetime.fromisoformat(world.manifest()["boundary"])
    assert f"boundary {boundary:%Y-%m-%d %H:%M} UTC" in table.stdout
    (section,) = [n for n, line in enumerate(lines) if line.startswith("├")]  # a line at the boundary
    first_realtime = next(row for row in rows if row["source"] == "realtime")
    below = lines[section + 1]
    assert (
        below.split("│")[1].strip() == first_realtime["event_date"]
        and int(below.split("│")[2]) == first_realtime["hour"]
    )

    reconciled = world.lambdaflow("reconcile", "--date", day.isoformat(), "--format", "table")
    assert reconciled.exit_code == 0, reconciled.stderr[-2000:]
    metric_rows = [line.split("│")[1].strip() for line in reconciled.stdout.splitlines() if line.startswith("│")]
    assert metric_rows == list(METRICS)  # one row per metric
    assert all(len(line) <= 160 for line in reconciled.stdout.splitlines())
