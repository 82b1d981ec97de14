"""Running the workers as real processes, and checking the raw store against the log."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lambdaflow.core.contract import classify, records_frame
from lambdaflow.core.raw_store import RawStore
from lambdaflow.core.storage import Storage
from lambdaflow.kafka.broker import EmbeddedBroker
from lambdaflow.kafka.clients import ensure_topic
from lambdaflow.ops.processes import Child, lambdaflow_command
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import Summary, produce, produce_live
from tests.kafka_helpers import read_all


class WorkerProcess:
    """One `lambdaflow <command>` process (archive, stream), stopped by its own PID: lambdaflow's child
    wrapper, with what a test asks of it (its totals as JSON, a kill -9, a clean exit)."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self.child = Child(command, lambdaflow_command(command, *args), env, log_path).start()

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def returncode(self) -> int | None:
        return None if self.child.running() else self.child.result().returncode

    def running(self) -> bool:
        return self.child.running()

    def kill_9(self) -> None:
        self.child.kill_9()

    def terminate(self, timeout: float = 60) -> dict:
        self.child.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 300) -> dict:
        finished = self.child.wait(timeout)
        assert finished.returncode == 0, self.log_path.read_text()[-3000:]
        return finished.json()

    def ensure_stopped(self) -> None:
        if self.child.running():
            self.child.kill_9()


class Producer:
    """Sends ``history`` in a thread of its own, then, with ``live_rate``, live events (stamped now)
    until the block ends: the workers a test kills inside the block always have new events to read."""

    def __init__(self, bootstrap: str, topic: str, history: generator.Options, live_rate: float | None = None) -> None:
        self._stop = threading.Event()
        self._sent: dict[str, Summary] = {}
        self._failure: list[BaseException] = []

        def send() -> None:
            try:
                self._sent["history"] = produce(bootstrap, topic, 3, history)
                if live_rate is not None:
                    self._sent["live"] = produce_live(bootstrap, topic, 3, history.seed + 1, live_rate, self._stop)
            except BaseException as error:
                self._failure.append(error)

        self._thread = threading.Thread(target=send)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        if self._failure:
            raise self._failure[0]

    @property
    def live_events(self) -> int:
        return self._sent["live"].events if "live" in self._sent else 0

    @property
    def summary(self) -> Summary:
        """Everything sent: the history's counts plus the live events."""
        history = self._sent["history"]
        return replace(history, messages=history.messages + self.live_events, events=history.events + self.live_events)


@dataclass
class LogTruth:
    """What the topic holds, classified by the contract."""

    valid: set[tuple[int, int]]
    rejected: set[tuple[int, int]]


def log_truth(bootstrap: str, topic: str, expected_messages: int) -> LogTruth:
    decoded = classify(records_frame(read_all(bootstrap, topic, expected_messages)))
    return LogTruth(
        valid=set(decoded.events.select("kafka_partition", "kafka_offset").iter_rows()),
        rejected=set(decoded.rejects.select("kafka_partition", "kafka_offset").iter_rows()),
    )


def archived_rows(
    data_dir: Path, folder: str, topic: str | None = None, storage: Storage | None = None
) -> list[tuple[int, int]]:
    """Every (partition, offset) row a reader of the raw tables counts: ``folder`` is ``raw/events``
    or ``dead_letter``; the rows of the table's current version (of the dead letter, those below each
    partition's resume point). ``topic``: the only topic archived under ``data_dir`` when None;
    ``storage``: the tables' (by default under ``data_dir``)."""
    tables_root = data_dir / "tables" / "raw"
    topics = [topic] if topic else sorted(p.name for p in tables_root.iterdir()) if tables_root.exists() else []
    rows: list[tuple[int, int]] = []
    for name in topics:
        storage = storage or Storage.from_env({}, data_dir)
        snapshot = RawStore(data_dir, name, storage).snapshot()
        if folder == "dead_letter":
            files, where = snapshot.dead_letter_files(), snapshot.dead_letter_counted()
        else:
            files, where = [u for us in snapshot.event_files(snapshot.event_dates()).values() for u in us], "true"
        if files:
            rows += (
                storage.duckdb()
                .execute(f"select kafka_partition, kafka_offset from read_parquet(?) where {where}", [files])
                .fetchall()
            )
    return rows


def assert_nothing_half_written(data_dir: Path, topic: str) -> None:
    """No temporary file is left, and every Parquet file of the tables that no commit added belongs to a
    batch that was refused or cut short (the tables never show it; a vacuum removes it)."""
    leftovers = [p for p in data_dir.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == [], f"temporary files left behind: {leftovers[:5]}"
    snapshot = RawStore(data_dir, topic, Storage.from_env({}, data_dir)).snapshot()
    listed = {Path(u) for us in snapshot.event_files(snapshot.event_dates()).values() for u in us}
    assert all(path.exists() for path in listed), "a committed raw file is missing"


def kill_9_one_after_another(start, kills: int, pause: tuple[float, float], seed: int, reported=None) -> None:
    """Starts a worker with ``start()`` and kills it with SIGKILL after a pause drawn from ``pause``
    (seconds), ``kills`` times. With ``reported`` (a function giving {partition: pid}), each pause
    begins once the worker has reported a partition, so that the kill lands while it works."""
    rng = random.Random(seed)
    for _ in range(kills):
        worker = start()
        if reported is not None:
            wait_for(lambda worker=worker: worker.pid in reported().values(), 60, "the worker to report a partition")
        time.sleep(rng.uniform(*pause))
        worker.kill_9()


def wait_for(condition, timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(every)


def status_pids(data_dir: Path, topic: str) -> dict[int, int]:
    """The PID of the archiver that last reported each partition."""
    return _reporters(RawStore(data_dir, topic).state_dir)


def speed_status_pids(data_dir: Path, topic: str) -> dict[int, int]:
    """The PID of the stream worker that last reported each partition."""
    return _reporters(data_dir / "speed" / topic)


def _reporters(folder: Path) -> dict[int, int]:
    found = {}
    for path in folder.glob("status-*.json"):
        status = json.loads(path.read_text())
        found[status["partition"]] = status["pid"]
    return found


class RestartableBroker:
    """An embedded broker of the test's own, restarted on the same port (and so losing its log)."""

    def __init__(self, log_dir: Path, topic: str) -> None:
        self.log_dir = log_dir
        self.topic = topic
        self.starts = 0
        self.broker = self._start(port=None)
        self.port = self.broker.port

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def pid(self) -> int | None:
        return self.broker.pid

    def _start(self, port: int | None) -> EmbeddedBroker:
        self.starts += 1
        broker = EmbeddedBroker(port=port, log_path=self.log_dir / f"broker-{self.starts}.log").start()
        ensure_topic(broker.bootstrap, self.topic, 3)
        return broker

    def go_away(self) -> None:
        """Stop it (SIGTERM to its PID): the port refuses connections and the log is gone."""
        self.broker.stop()

    def come_back(self, paused: tuple[int, ...] = ()) -> None:
        """Start it again on the same port, empty; processes in ``paused`` are stopped meanwhile, so
        that none of them asks the new broker for the topic before it is created with its 3
        partitions (the embedded broker would create it with its default count)."""
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        try:
            self.broker = self._start(port=self.port)
        finally:
            for pid in paused:
                os.kill(pid, signal.SIGCONT)

    def restart(self, paused: tuple[int, ...] = ()) -> None:
        self.go_away()
        self.come_back(paused)

    def stop(self) -> None:
        self.broker.stop()
