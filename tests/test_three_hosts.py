"""The pipeline as if on three hosts, meeting only on Kafka and one S3-compatible store.

Two archiver hosts, two stream-worker hosts, a batch host and a serving host each have a data
directory of their own; none reads another's. The store is a local S3 server (moto's), started for
the session and stopped by its PID. Workers are killed with SIGKILL while live events arrive and
restarted on the other host of their kind, so partitions move between hosts mid-flight. In the end
every valid offset is in the raw table once, the day built on the batch host reconciles with the
speed layer, before and after the batch host compacts the events files, and the serving host answers
every day as the log says.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from itertools import cycle
from pathlib import Path

import pytest

from lambdaflow.core.raw_store import RawStore
from lambdaflow.core.speed_files import SpeedFiles
from lambdaflow.core.storage import Storage
from lambdaflow.ops.object_store import LocalS3Server
from lambdaflow.synthetic import generator
from tests.cli_helpers import Cli
from tests.ground_truth import METRICS, hourly_metrics
from tests.kafka_helpers import read_all
from tests.worker_helpers import Producer, WorkerProcess, archived_rows, kill_9_one_after_another, log_truth

pytestmark = pytest.mark.slow

KILLS = 3


class Hosts:
    """A data directory per host, and the environment a process on it runs with."""

    def __init__(self, base: dict[str, str], root: Path) -> None:
        self.base, self.root = base, root
        self.storage = Storage.from_env(base, root / "nowhere")
        self.started: list[WorkerProcess] = []

    def env(self, host: str) -> dict[str, str]:
        return {**self.base, "LAMBDAFLOW_DATA_DIR": str(self.root / host)}

    def start(self, command: str, host: str, *args: str) -> WorkerProcess:
        log = self.root / f"{host}-{command}-{len(self.started)}.log"
        self.started.append(WorkerProcess(command, self.env(host), log, *args))
        return self.started[-1]

    def lambdaflow(self, host: str, *args: str) -> list[dict]:
        """`lambdaflow ARGS` on ``host``, which must succeed; its JSON lines."""
        done = Cli(self.env(host))(*args, timeout=600)
        assert done.exit_code == 0, done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_three_hosts_meet_only_on_the_store(
    kafka_cli: Cli, kafka_bootstrap: str, topic: str, s3_server: LocalS3Server, tmp_path: Path
) -> None:
    bucket = s3_server.bucket(f"hosts-{uuid.uuid4().hex[:12]}")
    hosts = Hosts(
        {
            **kafka_cli.env,
            **s3_server.env(),
            "LAMBDAFLOW_STORAGE_URL": f"{bucket}/lambdaflow",
            "LAMBDAFLOW_ARCHIVE_ROLL_SECONDS": "0.5",
            "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "0",
        },
        tmp_path,
    )
    midnight = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)
    history = generator.Options(
        days=2, events_per_day=4_000, seed=33, until=midnight, duplicates=0.05, out_of_order=0.05, malformed=0.01
    )
    archive_hosts, stream_hosts = cycle(["archive-a", "archive-b"]), cycle(["stream-a", "stream-b"])
    try:
        with Producer(kafka_bootstrap, topic, history, live_rate=200) as producer:
            kill_9_one_after_another(
                lambda: hosts.start("archive", next(archive_hosts)),
                KILLS,
                (0.5, 3.0),
                seed=1,
                reported=lambda: {p: (r or {}).get("pid") for p, r in archiver_reports(hosts, topic).items()},
            )
            kill_9_one_after_another(
                lambda: hosts.start("stream", next(stream_hosts)),
                KILLS,
                (0.5, 3.0),
                seed=2,
                reported=lambda: {p: r.get("pid") for p, r in speed_reports(hosts, topic).items()},
            )
        for command, host in (("archive", "archive-b"), ("stream", "stream-a")):  # catch up, on either host
            hosts.start(command, host, "--until-idle").wait()
    finally:
        for worker in hosts.started:
            worker.ensure_stopped()

    records = read_all(kafka_bootstrap, topic, producer.summary.messages)
    truth = log_truth(kafka_bootstrap, topic, producer.summary.messages)
    rows = archived_rows(tmp_path / "archive-a", "raw/events", topic, hosts.storage)
    assert not [row for row, seen in Counter(rows).items() if seen > 1], "an offset was archived twice"
    assert set(rows) == truth.valid
    assert set(archived_rows(tmp_path / "archive-b", "dead_letter", topic, hosts.storage)) == truth.rejected

    yesterday = midnight.date() - timedelta(days=1)
    hosts.lambdaflow("batch", "batch", "--date", yesterday.isoformat())
    reconciled = hosts.lambdaflow("batch", "reconcile", "--date", yesterday.isoformat())
    assert {row["metric"]: row["unexplained"] for row in reconciled} == dict.fromkeys(METRICS, 0)
    # the batch host compacts the events files the killed and restarted archivers left: rows unchanged
    (events,) = [row for row in hosts.lambdaflow("batch", "maintain") if row["table"] == "events"]
    assert events["compacted_files"] > events["written_files"] > 0
    assert sorted(archived_rows(tmp_path / "batch", "raw/events", topic, hosts.storage)) == sorted(rows)
    reconciled = hosts.lambdaflow("batch", "reconcile", "--date", yesterday.isoformat())
    assert {row["metric"]: row["unexplained"] for row in reconciled} == dict.fromkeys(METRICS, 0)

    daily = daily_truth(hourly_metrics(records))
    first = yesterday - timedelta(days=1)
    answered = hosts.lambdaflow("serve", "query", "--from", first.isoformat(), "--to", midnight.date().isoformat())
    assert {row["event_date"]: {m: row[m] for m in METRICS} for row in answered} == {
        day.isoformat(): daily.get(day, dict.fromkeys(METRICS, 0)) for day in (first, yesterday, midnight.date())
    }
    assert [row["source"] for row in answered] == ["realtime", "batch", "realtime"]

    for host in ("archive-a", "archive-b", "stream-a", "stream-b", "batch", "serve"):
        written = [p.relative_to(tmp_path / host) for p in (tmp_path / host).rglob("*.parquet")]
        assert not [p for p in written if p.parts[0] in ("tables", "batch", "speed")], (host, written[:5])


def archiver_reports(hosts: Hosts, topic: str) -> dict[int, dict | None]:
    return RawStore(hosts.root / "reader", topic, hosts.storage).statuses(fallback=3)


def speed_reports(hosts: Hosts, topic: str) -> dict[int, dict]:
    return SpeedFiles(hosts.root / "reader", topic, hosts.storage).statuses()


def daily_truth(hourly: dict[tuple[date, int, str], dict[str, int]]) -> dict[date, dict[str, int]]:
    days: dict[date, dict[str, int]] = {}
    for (day, _, _), cell in hourly.items():
        totals = days.setdefault(day, dict.fromkeys(METRICS, 0))
        for metric in METRICS:
            totals[metric] += cell[metric]
    return days
