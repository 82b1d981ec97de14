"""`lambdaflow broker`: the embedded broker as a command, started and stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from kafka import KafkaConsumer

from lambdaflow.kafka.broker import free_port, port_answers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


class BrokerCommand:
    def __init__(self, cli, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lambdaflow", "broker", *args],
            env=cli.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def first_line(self) -> str:
        return self.process.stdout.readline().rstrip("\n")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        out, err = self.process.communicate(timeout=30)
        return self.process.returncode, out, err


@pytest.fixture
def broker_command(cli):
    started: list[BrokerCommand] = []

    def start(*args: str) -> BrokerCommand:
        started.append(BrokerCommand(cli, *args))
        return started[-1]

    yield start
    for command in started:
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait()


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
    assert announcement["pid"] == broker.process.pid

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
    out, err = second.process.communicate(timeout=30)
    assert second.process.returncode == 1
    assert out == ""
    assert err.strip().splitlines()[-1] == (
        f"lambdaflow: error: an embedded broker already serves {bootstrap} (pid {first.process.pid}) for {data_dir}"
    )
    assert first.stop()[0] == 0
