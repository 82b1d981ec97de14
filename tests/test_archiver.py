"""`lambdaflow archive` against a real broker: every valid offset lands once, whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lambdaflow.core.raw_store import RawStore
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.kafka_helpers import read_all
from tests.worker_helpers import (
    Producer,
    WorkerProcess,
    archived_rows,
    assert_nothing_half_written,
    kill_9_one_after_another,
    log_truth,
    status_pids,
    wait_for,
)


def midnight_today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def options(days: int, per_day: int, seed: int, **shares: float) -> generator.Options:
    return generator.Options(days=days, events_per_day=per_day, seed=seed, until=midnight_today(), **shares)


@pytest.fixture
def archivers(kafka_cli, tmp_path):
    """Starts archiver processes with small, frequent batches; kills any left at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        env = {**kafka_cli.env, "LAMBDAFLOW_ARCHIVE_ROLL_MB": "0.5", "LAMBDAFLOW_ARCHIVE_ROLL_SECONDS": "0.5"}
        started.append(WorkerProcess("archive", env, tmp_path / f"archiver-{len(started)}.log", *args))
        return started[-1]

    yield start
    for archiver in started:
        archiver.ensure_stopped()


def assert_exactly_once(data_dir, topic, truth) -> None:
    rows = archived_rows(data_dir, "raw/events")
    assert len(rows) == len(set(rows)), "a row was archived twice"
    assert set(rows) == truth.valid
    dead = archived_rows(data_dir, "dead_letter")
    assert len(dead) == len(set(dead))
    assert set(dead) == truth.rejected
    assert_nothing_half_written(data_dir, topic)


@pytest.mark.parametrize(
    ("kills", "per_day", "live", "pause"),
    [
        # The smoke: live events keep arriving, and each archiver is killed within a second of
        # reporting its first partition, while it reads, buffers and publishes.
        pytest.param(2, 2_500, True, (0.0, 1.0), id="2-kills-5k-messages"),
        # The soak: a group join takes about 3 s; kill before, during and after it.
        pytest.param(8, 100_000, False, (2.0, 7.0), id="8-kills-200k-messages", marks=pytest.mark.slow),
    ],
)
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    kafka_bootstrap,
    topic,
    data_dir,
    archivers,
    kills: int,
    per_day: int,
    live: bool,
    pause: tuple[float, float],
) -> None:
    history = options(days=2, per_day=per_day, seed=21, duplicates=0.05, malformed=0.01)
    with Producer(kafka_bootstrap, topic, history, live_rate=200 if live else None) as producer:
        kill_9_one_after_another(
            archivers, kills, pause, seed=8, reported=(lambda: status_pids(data_dir, topic)) if live else None
        )
    summary = producer.summary
    assert summary.messages >= 2 * per_day

    archivers("--until-idle").wait()
    truth = log_truth(kafka_bootstrap, topic, summary.messages)
    assert len(truth.valid) == summary.events + summary.duplicates
    assert len(truth.rejected) == summary.malformed
    assert_exactly_once(data_dir, topic, truth)


def test_a_file_no_commit_added_is_ignored_by_readers(kafka_bootstrap, topic, data_dir, archivers) -> None:
    summary = produce(kafka_bootstrap, topic, 3, options(days=1, per_day=3_000, seed=4, malformed=0.01))
    archivers("--until-idle").wait()
    store = RawStore(data_dir, topic)
    day = store.event_dates()[0]
    published = store.files_for_date(day)

    # What a batch refused or cut short by a crash leaves in the table's folder, and a kill -9 in the
    # middle of a status write:
    orphan = Path(published[0]).with_name("part-00000-00000000-0000-0000-0000-000000000000-c000.zstd.parquet")
    shutil.copy(published[0], orphan)
    status_temp = store.state_dir / f"{store.status_path(0).name}.0123456789ab.tmp"
    status_temp.write_text('{"partition": 0')

    assert str(orphan) not in store.files_for_date(day)  # readers see committed files only
    assert store.files_for_date(day) == published

    archivers("--until-idle").wait()
    assert not status_temp.exists()  # the next owner of the partition removes it
    truth = log_truth(kafka_bootstrap, topic, summary.messages)
    assert_exactly_once(data_dir, topic, truth)


def epochs_archived(store: RawStore) -> Counter:
    """How many files of each log epoch the events table holds."""
    snapshot = store.snapshot()
    ranges = snapshot.file_ranges(snapshot.event_dates())
    return Counter(each.epoch for day_ranges in ranges.values() for each in day_ranges)


def test_a_published_name_is_never_replaced(tmp_path) -> None:
    from lambdaflow.core.files import publish_new

    final = tmp_path / "out" / "events-0-0-0-9.parquet"
    final.parent.mkdir()
    final.write_bytes(b"first")
    temp = tmp_path / "temp"
    temp.write_bytes(b"second")
    with pytest.raises(FileExistsError):
        publish_new(temp, final)
    assert final.read_bytes() == b"first"


def test_two_archivers_split_partitions_and_the_survivor_takes_over(
    kafka_bootstrap, topic, data_dir, archivers
) -> None:
    first_half = produce(
        kafka_bootstrap, topic, 3, options(days=1, per_day=20_000, seed=31, duplicates=0.05, malformed=0.01)
    )
    one, two = archivers(), archivers()

    def split_between_both() -> bool:
        owners = status_pids(data_dir, topic)
        return sorted(owners) == [0, 1, 2] and set(owners.values()) == {one.pid, two.pid}

    wait_for(split_between_both, 60, "both archivers to own partitions, all three between them")

    one.kill_9()
    second_half = produce(
        kafka_bootstrap, topic, 3, options(days=1, per_day=20_000, seed=32, duplicates=0.05, malformed=0.01)
    )
    wait_for(
        lambda: status_pids(data_dir, topic) == {0: two.pid, 1: two.pid, 2: two.pid},
        60,
        "the survivor to own every partition",
    )
    total = first_half.messages + second_half.messages
    store = RawStore(data_dir, topic)
    wait_for(
        lambda: sum(m.next_offset for m in store.manifests().values()) == total,
        60,
        "the survivor to archive everything",
    )
    two.terminate()

    assert_exactly_once(data_dir, topic, log_truth(kafka_bootstrap, topic, total))


@pytest.mark.slow
def test_a_broker_restart_under_a_running_archiver_starts_a_new_epoch(own_broker, data_dir, archivers) -> None:
    topic = own_broker.topic
    before = produce(own_broker.bootstrap, topic, 3, options(days=1, per_day=6_000, seed=41))
    archiver = archivers()
    store = RawStore(data_dir, topic)
    wait_for(
        lambda: sum(m.next_offset for m in store.manifests().values()) == before.messages,
        60,
        "the first log to be archived",
    )
    epoch_0 = {p: p.read_bytes() for day in store.event_dates() for p in map(Path, store.files_for_date(day))}

    own_broker.restart(paused=[archiver.pid])
    after = produce(own_broker.bootstrap, topic, 3, options(days=1, per_day=6_000, seed=42))
    wait_for(
        lambda: (
            all(m.epoch == 1 for m in store.manifests().values())
            and sum(m.next_offset for m in store.manifests().values()) == after.messages
        ),
        90,
        "the new log to be archived in epoch 1",
    )
    archiver.terminate()
    new_log = read_all(own_broker.bootstrap, topic, after.messages)

    assert "LOG RESTARTED" in archiver.log_path.read_text()
    for path, content in epoch_0.items():
        assert path.read_bytes() == content  # nothing published was replaced
    assert set(epochs_archived(store)) == {0, 1}
    rows = archived_rows(data_dir, "raw/events")
    assert len(rows) == before.events + after.events
    assert {(r.partition, r.offset) for r in new_log} <= set(rows)


@pytest.mark.slow
@pytest.mark.parametrize("paused_for", [0, 8], ids=["back-at-once", "paused-past-the-session"])
def test_a_broker_back_faster_than_the_watch_sees_loses_no_buffered_message(
    own_broker, data_dir, kafka_cli, tmp_path, paused_for: float
) -> None:
    """The archiver holds the first log's messages in its buffers (a long roll) when the broker restarts
    empty while the archiver is paused, so its watch never sees the broker leave. The new log then grows
    past the old position. The buffered messages, read from the first log, must be archived in its
    epoch, and the new log in the next one: nothing the speed layer may have counted is dropped.
    Paused past its session timeout, the archiver learns on waking that the group dropped it, and lets
    go of its partitions before it polls again: it must still know the buffers came from the old log."""
    topic = own_broker.topic
    env = {**kafka_cli.env, "LAMBDAFLOW_ARCHIVE_ROLL_MB": "256", "LAMBDAFLOW_ARCHIVE_ROLL_SECONDS": "3600"}
    archiver = WorkerProcess("archive", env, tmp_path / "archiver.log")
    try:
        before = produce(own_broker.bootstrap, topic, 3, options(days=1, per_day=600, seed=61))
        status = RawStore(data_dir, topic).state_dir
        wait_for(
            lambda: (
                sum(json.loads(p.read_text()).get("read_offset") or 0 for p in status.glob("status-*.json"))
                == before.messages
            ),
            60,
            "the first log to be read into the buffers",
        )
        assert archived_rows(data_dir, "raw/events") == []  # all of it buffered
        os.kill(archiver.pid, signal.SIGSTOP)
        try:
            own_broker.restart()
            time.sleep(paused_for)
        finally:
            os.kill(archiver.pid, signal.SIGCONT)
        after = produce(own_broker.bootstrap, topic, 3, options(days=1, per_day=1_800, seed=62))
        wait_for(
            lambda: len(archived_rows(data_dir, "raw/events")) >= before.events,
            60,
            "the buffered first log to be published",
        )
        archiver.terminate()
    finally:
        archiver.ensure_stopped()
    WorkerProcess("archive", kafka_cli.env, tmp_path / "archiver-2.log", "--until-idle").wait()
    assert set(epochs_archived(RawStore(data_dir, topic))) == {0, 1}
    assert len(archived_rows(data_dir, "raw/events")) == before.events + after.events


@pytest.mark.slow
def test_a_log_that_restarted_longer_is_recognised_by_its_last_record(own_broker, data_dir, archivers) -> None:
    topic = own_broker.topic
    before = produce(own_broker.bootstrap, topic, 3, options(days=1, per_day=3_000, seed=51))
    archivers("--until-idle").wait()

    own_broker.restart()
    # More messages than before: every resume offset is inside the new log.
    after = produce(own_broker.bootstrap, topic, 3, options(days=1, per_day=9_000, seed=52))
    totals = archivers("--until-idle").wait()

    assert totals["new_epochs"] == 3
    assert totals["messages"] == after.messages
    rows = archived_rows(data_dir, "raw/events")
    assert len(rows) == before.events + after.events


def test_a_caught_up_archiver_completes_a_closed_day_without_waiting_for_its_roll(kafka_cli, tmp_path) -> None:
    """The first catch-up: history arrives, the archiver reads it all, and the closed day must be
    complete for the DAG's sensor soon after, not only once the default roll (300 s) publishes."""
    import time
    from datetime import timedelta

    from lambdaflow.batch.buffers import RollPolicy
    from lambdaflow.batch.completeness import completeness
    from lambdaflow.core.config import Settings

    env = {**kafka_cli.env, "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "0"}  # the default roll: 64 MB or 300 s
    settings = Settings.from_env(env)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    archiver = WorkerProcess("archive", env, tmp_path / "archiver.log")
    try:
        sent = kafka_cli("produce", "--days", "1", "--events-per-day", "2000")
        assert sent.exit_code == 0, sent.stderr[-2000:]
        started = time.monotonic()
        while not completeness(settings).day_is_complete(yesterday):
            assert time.monotonic() - started < RollPolicy().max_seconds / 3, completeness(settings).partitions
            assert archiver.running(), archiver.log_path.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        archiver.terminate()
