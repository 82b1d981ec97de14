"""`lambdaflow stream` against a real broker: every hour exact, whoever gets killed."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pytest

from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.ground_truth import METRICS, hourly_metrics
from tests.kafka_helpers import read_all
from tests.worker_helpers import Producer, WorkerProcess, kill_9_one_after_another, speed_status_pids, wait_for


def served_by_speed_layer(data_dir, topic) -> dict:
    """The snapshots summed over partitions, as the serving layer reads them."""
    pattern = data_dir / "speed" / topic / "snapshots" / "*.parquet"
    rows = duckdb.execute(f"""
        select event_date, hour, country, {", ".join(f"sum({m})::bigint" for m in METRICS)}
        from read_parquet('{pattern}')
        group by all
    """).fetchall()
    return {
        (event_date, hour, country): dict(zip(METRICS, values, strict=False))
        for event_date, hour, country, *values in rows
        if any(values)
    }


def two_days(seed: int, per_day: int) -> generator.Options:
    until = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return generator.Options(
        days=2,
        events_per_day=per_day,
        seed=seed,
        until=until,
        duplicates=0.05,
        out_of_order=0.05,
        late=0.01,
        malformed=0.01,
    )


def produce_two_days(bootstrap, topic, seed: int, per_day: int = 50_000):
    return produce(bootstrap, topic, 3, two_days(seed, per_day))


@pytest.fixture
def stream_workers(kafka_cli, tmp_path):
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        started.append(WorkerProcess("stream", dict(kafka_cli.env), tmp_path / f"stream-{len(started)}.log", *args))
        return started[-1]

    yield start
    for worker in started:
        worker.ensure_stopped()


@pytest.mark.parametrize(
    ("kills", "per_day", "live", "pause"),
    [
        # The smoke: live events keep arriving, and each worker is killed within a second of
        # reporting its first partition, while it reads, counts and commits.
        pytest.param(2, 2_500, True, (0.0, 1.0), id="2-kills-5k-events"),
        pytest.param(10, 50_000, False, (1.5, 6.0), id="10-kills-100k-events", marks=pytest.mark.slow),
    ],
)
def test_kill_9_at_random_moments_keeps_every_hour_exact(
    kafka_bootstrap,
    topic,
    data_dir,
    stream_workers,
    kills: int,
    per_day: int,
    live: bool,
    pause: tuple[float, float],
) -> None:
    with Producer(kafka_bootstrap, topic, two_days(61, per_day), live_rate=200 if live else None) as producer:
        kill_9_one_after_another(
            stream_workers,
            kills,
            pause,
            seed=10,
            reported=(lambda: speed_status_pids(data_dir, topic)) if live else None,
        )
    summary = producer.summary
    assert summary.events == 2 * per_day + producer.live_events
    # What a kill in the middle of replacing a status file or a snapshot leaves behind:
    speed = data_dir / "speed" / topic
    planted = [
        speed / "status-1.json.0123456789ab.tmp",
        data_dir / "tmp" / "speed" / "partition-1.parquet.0123456789ab.tmp",
    ]
    for temp in planted:
        temp.parent.mkdir(parents=True, exist_ok=True)
        temp.write_text("half")

    totals = stream_workers("--until-idle").wait()
    assert not [temp for temp in planted if temp.exists()]  # the partition's next owner removed them
    truth = hourly_metrics(read_all(kafka_bootstrap, topic, summary.messages))
    assert served_by_speed_layer(data_dir, topic) == truth
    assert sum(cell["events"] for cell in truth.values()) == summary.events
    assert totals["stale_batches"] == 0


def test_two_workers_share_partitions_and_the_survivor_keeps_totals_exact(
    kafka_bootstrap, topic, data_dir, stream_workers
) -> None:
    first = produce_two_days(kafka_bootstrap, topic, 71, per_day=15_000)
    one, two = stream_workers(), stream_workers()
    snapshots = data_dir / "speed" / topic / "snapshots"
    wait_for(lambda: len(list(snapshots.glob("*.parquet"))) == 3, 60, "all three partitions to be counted")
    logs = lambda: (one.log_path.read_text(), two.log_path.read_text())  # noqa: E731
    wait_for(lambda: all("assigned" in text for text in logs()), 60, "both workers to own partitions")

    one.kill_9()
    second = produce_two_days(kafka_bootstrap, topic, 72, per_day=15_000)
    total = first.messages + second.messages
    wait_for(
        lambda: "assigned" in two.log_path.read_text().split("revoked")[-1],
        60,
        "the survivor to take the partitions over",
    )
    truth = hourly_metrics(read_all(kafka_bootstrap, topic, total))
    wait_for(lambda: served_by_speed_layer(data_dir, topic) == truth, 90, "the totals to be exact")
    two.terminate()
    assert served_by_speed_layer(data_dir, topic) == truth
