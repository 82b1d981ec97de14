"""Both workers against a broker that goes away and comes back, over TCP.

The embedded broker keeps its log in memory, so it comes back empty: the
archiver must keep what it had read (published when the broker left), start a
new log epoch without touching a published file, and both layers must serve
what is produced afterwards. While the broker is away each worker says so once,
keeps running, and does not flood its log.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from lambdaflow.core.raw_store import RawStore
from lambdaflow.kafka import clients
from lambdaflow.kafka.broker_watch import BrokerWatch
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.worker_helpers import WorkerProcess, wait_for

AWAY_SECONDS = 12


def today_so_far(seed: int, per_day: int) -> generator.Options:
    return generator.Options(days=0, events_per_day=per_day, seed=seed, until=datetime.now(UTC))


def read_offsets(store: RawStore) -> dict[int, tuple[int | None, int | None]]:
    """Per partition: how far the archiver has read, and the log's end, from its status files."""
    found = {}
    for path in store.state_dir.glob("status-*.json"):
        status = json.loads(path.read_text())
        found[status["partition"]] = (status.get("read_offset"), status.get("end_offset"))
    return found


def raw_events(data_dir) -> tuple[int, int]:
    """(rows, distinct event ids) in the raw events table."""
    files: list[str] = []
    for topic_dir in sorted((data_dir / "tables" / "raw").glob("*")):
        snapshot = RawStore(data_dir, topic_dir.name).snapshot()
        files += [uri for uris in snapshot.event_files(snapshot.event_dates()).values() for uri in uris]
    if not files:
        return 0, 0
    return duckdb.execute("select count(*), count(distinct event_id) from read_parquet(?)", [files]).fetchone()


def lines_between(log_text: str, first: str, last: str) -> list[str]:
    lines = log_text.splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i, line in enumerate(lines) if last in line)
    return lines[start + 1 : end]


@pytest.mark.slow
def test_workers_wait_out_a_broker_that_goes_away_and_serve_what_comes_after(own_broker, kafka_cli, data_dir, tmp_path):
    before = produce(own_broker.bootstrap, own_broker.topic, 3, today_so_far(seed=61, per_day=8_000))
    # The default roll (300 s): what the archiver has read is still buffered when the broker leaves.
    workers = [WorkerProcess(command, kafka_cli.env, tmp_path / f"{command}.log") for command in ("archive", "stream")]
    try:
        store = RawStore(data_dir, own_broker.topic)
        wait_for(
            lambda: (
                len(offsets := read_offsets(store)) == 3
                and all(read is not None and read == end for read, end in offsets.values())
                and sum(end for _, end in offsets.values()) == before.messages
            ),
            90,
            "the archiver to read the log",
        )
        wait_for(lambda: query_today(kafka_cli)["events"] == before.events, 90, "the speed layer to count the log")

        own_broker.go_away()
        wait_for(lambda: raw_events(data_dir)[0] == before.events, 30, "the archiver to publish what it read")
        published = {
            path: hashlib.sha256(path.read_bytes()).hexdigest()
            for day in store.event_dates()
            for path in map(Path, store.files_for_date(day))
        }
        for _ in range(AWAY_SECONDS):
            time.sleep(1)
            assert all(worker.running() for worker in workers), "a worker exited while the broker was away"

        own_broker.come_back(paused=[worker.pid for worker in workers])
        after = produce(own_broker.bootstrap, own_broker.topic, 3, today_so_far(seed=62, per_day=4_000))
        wait_for(
            lambda: query_today(kafka_cli)["events"] == before.events + after.events,
            120,
            "the speed layer to count the new log",
        )
        wait_for(
            lambda: sum(end for read, end in read_offsets(store).values() if read == end) == after.messages,
            60,
            "the archiver to read the new log",
        )
        summaries = [worker.terminate() for worker in workers]  # the archiver publishes what it holds
    finally:
        for worker in workers:
            worker.ensure_stopped()

    assert raw_events(data_dir) == (before.events + after.events, before.events + after.events)
    for path, digest in published.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # nothing published was replaced
    assert {manifest.epoch for manifest in store.manifests().values()} == {1}
    assert summaries[0]["new_epochs"] == 3 and summaries[1]["log_restarts"] == 3
    for worker in workers:
        log_text = worker.log_path.read_text()
        assert log_text.count("does not answer") == 1, log_text[-3000:]
        assert log_text.count("answers again") == 1, log_text[-3000:]
        quiet = lines_between(log_text, "does not answer", "answers again")
        # No line per failed connection attempt: the client's own are not shown, and ours are few.
        assert not [line for line in quiet if " kafka." in line], "\n".join(quiet)
        assert len(quiet) <= 6, "\n".join(quiet)
        assert "Traceback" not in log_text


def send_to_partition_0(bootstrap: str, topic: str, count: int, seed: int) -> None:
    """``count`` valid events stamped now, all into partition 0."""
    clients.ensure_topic(bootstrap, topic, 3)
    producer = clients.producer(bootstrap)
    try:
        for message in itertools.islice(generator.live(seed, events_per_day=10_000), count):
            producer.send(topic, key=message.key, value=message.value, partition=0).get(timeout=30)
    finally:
        producer.close()


@pytest.mark.slow
def test_the_speed_layer_counts_a_new_log_that_outgrew_its_position(own_broker, kafka_cli, tmp_path):
    """The broker comes back empty and its new log grows past where the worker stood before the worker
    fetches again: what the worker fetches at its old position belongs to another log, and the records
    before it must be counted too."""
    send_to_partition_0(own_broker.bootstrap, own_broker.topic, 3, seed=71)
    worker = WorkerProcess("stream", kafka_cli.env, tmp_path / "stream.log")
    try:
        wait_for(lambda: query_today(kafka_cli)["events"] == 3, 90, "the speed layer to count the log")
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            own_broker.restart()
            send_to_partition_0(own_broker.bootstrap, own_broker.topic, 8, seed=72)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        wait_for(lambda: query_today(kafka_cli)["events"] == 11, 90, "the speed layer to count the new log")
        time.sleep(3)  # a worker that went on at its old position would count more by now, or never reach 11
        assert query_today(kafka_cli)["events"] == 11
        summary = worker.terminate()
    finally:
        worker.ensure_stopped()
    assert summary["log_restarts"] == 1, worker.log_path.read_text()[-3000:]


def query_today(cli) -> dict:
    today = datetime.now(UTC).date().isoformat()
    result = cli("query", "--from", today, "--to", today)
    assert result.exit_code == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_watch_says_it_once_reports_every_30_s_and_backs_off(caplog) -> None:
    clock, answers, probes = FakeClock(), [True], []

    def reachable() -> bool:
        probes.append(clock.now)
        return answers[0]

    watch = BrokerWatch("127.0.0.1:1", "worker", clock=clock, reachable=reachable)
    caplog.set_level("INFO", logger="lambdaflow.kafka.broker_watch")
    assert watch.client_complained() is False  # a client error while the broker answers: shown
    answers[0] = False
    clock.now += 1
    assert watch.client_complained() is True
    for _ in range(95):
        clock.now += 1
        watch.check()
        watch.client_complained()
    answers[0] = True
    clock.now += 5
    watch.check()

    messages = [record.getMessage() for record in caplog.records]
    assert sum("does not answer" in m for m in messages) == 1
    assert sum("still away" in m for m in messages) == 3  # at 30, 60 and 90 s
    assert sum("answers again" in m for m in messages) == 1 and watch.away_since is None
    away = probes[1:-1]  # from the first probe that failed to the last one before the broker came back
    gaps = [b - a for a, b in zip(away, away[1:], strict=False)]
    assert gaps[:4] == [1, 2, 4, 5] and max(gaps) <= 5  # doubling, capped at the client's backoff
    assert watch.departures == 1


def test_the_watch_says_the_broker_answers_again_before_the_rejoin_does(caplog) -> None:
    clock, answers = FakeClock(), [False]
    watch = BrokerWatch("127.0.0.1:1", "worker", clock=clock, reachable=lambda: answers[0])
    caplog.set_level("INFO", logger="lambdaflow.kafka.broker_watch")
    watch.client_got_through()  # the broker answers: nothing to say
    assert not caplog.records
    assert watch.client_complained() is True  # the broker goes away
    for _ in range(4):
        clock.now += 1
        watch.check()  # probes back off: at 1, 3 and 7 s
    answers[0] = True
    clock.now += 0.5
    watch.check()
    assert watch.away_since is not None  # not yet due
    watch.client_got_through()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("does not answer" in m for m in messages) == 1
    assert "answers again" in messages[-1] and watch.away_since is None
