"""`lambdaflow produce` through the real CLI against the real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from lambdaflow.core.contract import classify, records_frame
from tests.kafka_helpers import read_all
from tests.worker_helpers import wait_for

ARGS = ["--days", "2", "--events-per-day", "3000", "--seed", "5", "--until", "2026-11-27T06:00:00Z"]


def test_produce_sends_what_its_summary_says(kafka_cli, kafka_bootstrap, topic) -> None:
    result = kafka_cli(
        "produce", *ARGS, "--duplicates", "0.1", "--malformed", "0.05", "--late", "0.02", "--out-of-order", "0.1"
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # stdout holds the result only; progress and logs go to stderr
    summary = json.loads(lines[0])
    assert summary["topic"] == topic
    assert summary["events_per_date"] == {"2026-11-25": 3000, "2026-11-26": 3000, "2026-11-27": 750}
    assert summary["events"] == 6750
    assert summary["messages"] == summary["events"] + summary["duplicates"] + summary["malformed"]
    assert summary["duplicates"] > 0 and summary["malformed"] > 0
    assert summary["late"] > 0 and summary["out_of_order"] > 0
    assert "produce" in result.stderr

    records = read_all(kafka_bootstrap, topic, summary["messages"])
    assert len(records) == summary["messages"]
    decoded = classify(records_frame(records))
    assert decoded.rejects.height == summary["malformed"]
    assert decoded.events["event_id"].n_unique() == summary["events"]
    assert Counter(str(d) for d in decoded.events.unique("event_id")["event_date"]) == Counter(
        summary["events_per_date"]
    )


def test_same_seed_sends_the_same_messages(kafka_cli, kafka_bootstrap, topic) -> None:
    first = json.loads(kafka_cli("produce", *ARGS, "--duplicates", "0.1", "--malformed", "0.05").stdout)
    second = json.loads(kafka_cli("produce", *ARGS, "--duplicates", "0.1", "--malformed", "0.05").stdout)
    assert first == {**second, "seconds": first["seconds"], "messages_per_second": first["messages_per_second"]}
    records = read_all(kafka_bootstrap, topic, first["messages"] + second["messages"])
    # Keyed messages land in the same partition in the same order; keyless ones anywhere.
    by_partition: dict[int, list] = {}
    for r in records:
        if r.key is not None:
            by_partition.setdefault(r.partition, []).append((r.key, r.value))
    for sent in by_partition.values():
        half = len(sent) // 2
        assert len(sent) == 2 * half and sent[:half] == sent[half:]
    assert Counter((r.key, r.value) for r in records if r.key is None) == Counter(
        {key_value: 2 for key_value in {(r.key, r.value) for r in records if r.key is None}}
    )


def test_table_format_is_for_people(kafka_cli) -> None:
    result = kafka_cli(
        "produce", "--days", "0", "--events-per-day", "24", "--until", "2026-11-27T02:00:00Z", "--format", "table"
    )
    assert result.exit_code == 0, result.stderr
    assert "messages" in result.stdout and "│" in result.stdout


def test_no_broker_gets_one_clear_line(cli) -> None:
    result = cli("produce", "--days", "0")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "lambdaflow: error: no Kafka broker: start the embedded one with `lambdaflow broker` "
        "(in another terminal) or set KAFKA_BOOTSTRAP"
    )
    assert result.stdout == ""


def test_unreachable_kafka_gets_one_clear_line(cli) -> None:
    cli.env["KAFKA_BOOTSTRAP"] = "127.0.0.1:1"
    result = cli("produce", "--days", "0", "--until", "2026-11-27T02:00:00Z")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "lambdaflow: error: no Kafka broker answers at 127.0.0.1:1"


def test_bad_options_are_usage_errors(cli) -> None:
    for args in (["--duplicates", "1.5"], ["--days", "-1"], ["--until", "yesterday"], ["--rate", "0"]):
        result = cli("produce", *args)
        assert result.exit_code == 2, args
        assert "Error: Invalid value for" in result.stderr
        assert "Traceback" not in result.stderr


def test_live_sends_recent_valid_events_until_sigterm(kafka_cli, kafka_bootstrap, topic, tmp_path) -> None:
    stderr_path = tmp_path / "live.log"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "lambdaflow", "produce", "--live", "--rate", "50", "--seed", "9"],
            env=kafka_cli.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        wait_for(
            lambda: "live: sending to" in stderr_path.read_text() or process.poll() is not None,
            timeout=60,
            what="the live producer to start",
        )
        started = datetime.now(UTC)
        time.sleep(2.0)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        stopped = datetime.now(UTC)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr_path.read_text()
    lines = out.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["topic"] == topic and summary["seed"] == 9
    assert 50 <= summary["messages"] <= 50 * 4  # about 2 s at 50/s, with start-up and shutdown slack
    assert summary["messages"] == summary["events"] == sum(summary["events_per_date"].values())
    assert summary["duplicates"] == summary["malformed"] == 0

    records = read_all(kafka_bootstrap, topic, summary["messages"])
    assert len(records) == summary["messages"]
    decoded = classify(records_frame(records))
    assert decoded.rejects.height == 0
    assert decoded.events["event_id"].n_unique() == summary["events"]
    occurred = decoded.events["occurred_at"]
    assert occurred.min() >= started - timedelta(seconds=5)
    assert occurred.max() <= stopped + timedelta(seconds=1)
    assert Counter(str(d) for d in decoded.events["event_date"]) == Counter(summary["events_per_date"])


def test_live_refuses_history_options(cli) -> None:
    result = cli("produce", "--live", "--days", "2", "--malformed", "0.1")
    assert result.exit_code == 2
    assert "--live sends valid events stamped now; it takes no --days, --malformed" in result.stderr
