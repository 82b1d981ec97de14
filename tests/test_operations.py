"""An operator's path through the real CLI: a lagging speed layer across a manual batch for today.

A user's event of 09:xx reaches the topic after the same user's later event,
and the speed layer is not running when it does. `batch --today` then counts
the user in the early hour; when the speed layer reads the early event, the
user must leave its later, realtime hour, and a replay must agree.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from lambdaflow.kafka import clients


def send(bootstrap: str, topic: str, *events: dict) -> None:
    producer = clients.producer(bootstrap)
    try:
        for event in events:
            producer.send(topic, key=event["user_id"].encode(), value=json.dumps(event).encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


def login(event_id: str, at: datetime) -> dict:
    return {
        "event_id": event_id,
        "event_type": "login",
        "user_id": "u-late",
        "occurred_at": at.isoformat(),
        "country": "DE",
    }


def today_rows(kafka_cli, today: str) -> tuple[dict, list[dict]]:
    daily = kafka_cli("query", "--from", today, "--to", today)
    hourly = kafka_cli("query", "--from", today, "--to", today, "--hourly")
    assert daily.exit_code == 0 and hourly.exit_code == 0, daily.stderr[-2000:] + hourly.stderr[-2000:]
    return json.loads(daily.stdout), [json.loads(line) for line in hourly.stdout.splitlines()]


LATENESS = timedelta(minutes=10)
BUILD_MARGIN = timedelta(minutes=3)


def complete_until(now: datetime) -> datetime:
    """The boundary `batch --today` sets at `now`: the last full hour before the allowed lateness."""
    return (now - LATENESS).replace(minute=0, second=0, microsecond=0)


def clear_of_the_next_roll() -> datetime:
    """Now, or just after the boundary next moves, if that would happen within a build's time."""
    now = datetime.now(UTC)
    roll = complete_until(now) + timedelta(hours=1) + LATENESS
    if roll - now < BUILD_MARGIN:
        time.sleep((roll - now).total_seconds() + 1)
        now = datetime.now(UTC)
    return now


@pytest.mark.slow
def test_a_user_counted_by_todays_batch_leaves_the_realtime_hour_once_the_speed_layer_reads_it(
    kafka_cli, kafka_bootstrap
) -> None:
    now = clear_of_the_next_roll()
    boundary = complete_until(now)
    if boundary.date() != now.date() or boundary.hour < 3:
        pytest.skip("today has fewer than 3 complete hours yet")
    topic, today = kafka_cli.env["LAMBDAFLOW_TOPIC"], now.date().isoformat()
    early, later = boundary - timedelta(hours=2, minutes=50), now - timedelta(minutes=1)

    send(kafka_bootstrap, topic, login("e-later", later))
    assert kafka_cli("stream", "--until-idle").exit_code == 0  # the speed layer counts u-late at `later`
    send(kafka_bootstrap, topic, login("e-early", early))  # arrives after, occurred before
    assert kafka_cli("archive", "--until-idle").exit_code == 0
    built = kafka_cli("batch", "--today", timeout=900)
    assert built.exit_code == 0, built.stderr[-3000:]
    if complete_until(datetime.now(UTC)) != boundary:
        pytest.skip(f"the build took more than {BUILD_MARGIN} and the boundary moved meanwhile")
    assert json.loads(built.stdout)["boundary"] == boundary.isoformat()

    assert kafka_cli("stream", "--until-idle").exit_code == 0  # the lagging speed layer reads e-early
    day, hours = today_rows(kafka_cli, today)
    assert (day["active_users"], day["events"], day["source"]) == (1, 2, "mixed")
    assert {row["hour"]: (row["active_users"], row["source"]) for row in hours} == {
        early.hour: (1, "batch"),
        later.hour: (0, "realtime"),
    }

    replayed = kafka_cli("stream", "--replay", "--until-idle", timeout=600)
    assert replayed.exit_code == 0, replayed.stderr[-3000:]
    assert today_rows(kafka_cli, today) == (day, hours)
