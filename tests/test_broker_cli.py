"""`lambdaflow broker`: the embedded broker as a command, started and stopped by PID."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from lambdaflow.kafka.broker import free_port, port_answers
from lambdaflow.ops.processes import Child, lambdaflow_command
from lambdaflow.ops.procfs import proc_stat


def _alive(pid: int) -> bool:
    """Running: a zombie (exited, not yet reaped by its parent) counts as gone."""
    stat = proc_stat(pid)
    return stat is not None and stat.running


class BrokerCommand:
    """`lambdaflow broker` in lambdaflow's child wrapper: its stdout and its stderr (the log) in files."""

    def __init__(self, cli, log_path: Path, *args: str) -> None:
        self.child = Child("broker", lambdaflow_command("broker", *args), cli.env, log_path).start()

    @property
    def pid(self) -> int:
        return self.child.pid

    def first_line(self) -> str:
        return self.child.read_line(timeout=30)

    def finished(self) -> tuple[int, str, str]:
        """Its exit code, what it printed after the lines read, and its log."""
        done = self.child.wait(30)
        return done.returncode, done.stdout, self.child.log_path.read_text()

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
        self.child.send_signal(signum)
        return self.finished()


@pytest.fixture
def broker_command(cli, tmp_path):
    started: list[BrokerCommand] = []

    def start(*args: str) -> BrokerCommand:
        started.append(BrokerCommand(cli, tmp_path / f"broker-{len(started)}.log", *args))
        return started[-1]

    yield start
    for command in started:
        if command.child.running():
            command.child.kill_9()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_broker_prints_its_address_serves_the_topic_and_stops_cleanly(cli, data_dir, broker_command, signum) -> None:
    broker = broker_command()
    line = broker.first_line()
    assert line.startswith("bootstrap: 127.0.0.1:")
    bootstrap = line.removeprefix("bootstrap: ")
    host, port = bootstrap.split(":")
    assert port_answers(host, int(port))

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        assert consumer.partitions_for_topic("events") == {0, 1, 2}
    finally:
        consumer.close()

    announcement = json.loads((data_dir / "broker" / "broker.json").read_text())
    assert announcement["bootstrap"] == bootstrap
    assert announcement["pid"] == broker.pid

    code, out, err = broker.stop(signum)
    assert code == 0
    assert out == ""  # the address line was the only output
    assert not _alive(announcement["broker_pid"])
    assert not port_answers(host, int(port))
    assert not (data_dir / "broker" / "broker.json").exists()


def test_broker_listens_on_the_chosen_port(broker_command) -> None:
    port = free_port()
    broker = broker_command("--port", str(port))
    assert broker.first_line() == f"bootstrap: 127.0.0.1:{port}"
    assert broker.stop()[0] == 0


def test_other_commands_find_the_running_broker(cli, broker_command) -> None:
    broker = broker_command()
    bootstrap = broker.first_line().removeprefix("bootstrap: ")
    result = cli("produce", "--days", "0", "--events-per-day", "240", "--until", "2026-11-27T01:00:00Z")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["messages"] == 10
    assert f"at {bootstrap}" in result.stderr
    broker.stop()


def test_a_second_broker_on_the_same_data_dir_is_refused(data_dir, broker_command) -> None:
    first = broker_command()
    bootstrap = first.first_line().removeprefix("bootstrap: ")
    second = broker_command()
    code, out, err = second.finished()
    assert code == 1
    assert out == ""
    assert err.strip().splitlines()[-1] == (
        f"lambdaflow: error: an embedded broker already serves {bootstrap} (pid {first.pid}) for {data_dir}"
    )
    assert first.stop()[0] == 0
