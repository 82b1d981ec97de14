"""The peer: lambdaflow's hourly metrics computed by quixstreams, the Python stream processor a team
would pick instead of writing a worker of its own.

``python -m bench.peer --messages N --out FILE`` runs one quixstreams
application on the topic in ``LAMBDAFLOW_TOPIC`` at ``KAFKA_BOOTSTRAP`` (a
consumer group of its own, from the earliest offset) until it has processed
``N`` messages, then writes the hourly rows it counted to ``FILE`` and prints a
JSON summary, as `lambdaflow stream --until-idle` does. The metrics come from
the same definition (`lambdaflow.core.metrics`), computed the way quixstreams
is meant to be used:

* dedupe and first-seen users in quixstreams state (RocksDB), which is scoped
  by the message key: the key is the user_id, and producers re-send a
  duplicate with the same key, so a user's event ids and first events of each
  UTC day live under that user's key;
* each distinct event's contribution to its hour and country is then summed
  in quixstreams state too, re-keyed by ``group_by`` (hour and country) through
  the repartition topic quixstreams creates for it.

"First" is by arrival here (quixstreams processes a partition in offset
order); the benchmark's events arrive in occurred_at order per user, so that
is the definition's "first by occurred_at, then offset" on these events. The
peer applies no event contract: every benchmark event is valid, and checking
them would only add work to the peer. Changelog topics are off (the embedded
broker lacks what quixstreams needs for them): the peer's state is local, as
lambdaflow's is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("lambdaflow.bench")

INPUT_CONFIGS = {"retention.ms": "-1", "retention.bytes": "-1"}
"""The input topic needs these configs for quixstreams to accept it on the embedded broker."""


def _contribution(metrics: tuple, event: dict, firsts: dict[str, bool]) -> dict[str, int]:
    """What one distinct event adds to its hour and country, by the metric definition."""
    event_type = event["event_type"]
    added = {}
    for metric in metrics:
        selected = not metric.event_types or event_type in metric.event_types
        if metric.aggregation == "count":
            added[metric.name] = 1 if selected else 0
        elif metric.aggregation == "sum":
            added[metric.name] = int(event.get(metric.field) or 0) if selected else 0
        else:
            added[metric.name] = 1 if firsts.get(metric.name) else 0
    return added


def run(bootstrap: str, topic: str, group: str, messages: int, out: Path, state_dir: Path) -> dict:
    from quixstreams import Application

    from lambdaflow.core.metrics import load

    metrics = load()
    users = [m for m in metrics if m.counts_users]
    started = time.monotonic()
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        use_changelog_topics=False,
        state_dir=str(state_dir),
        loglevel="WARNING",
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1500},
    )
    events = app.topic(topic, value_deserializer="json", key_deserializer="str")
    seen = {"messages": 0, "duplicates": 0, "summed": 0, "first_at": 0.0, "last_at": 0.0}
    totals: dict[tuple[str, int, str], dict[str, int]] = {}

    def count_input(value: dict) -> dict:
        seen["messages"] += 1
        if seen["messages"] == 1:
            seen["first_at"] = time.monotonic()
        return value

    def dedupe_and_attribute(event: dict, state) -> dict | None:
        """Per user (the message key): drop a seen event id; note the user-day's firsts."""
        event_id = "e:" + event["event_id"]
        if state.get(event_id) is not None:
            seen["duplicates"] += 1
            return None
        state.set(event_id, 1)
        occurred = event["occurred_at"]  # ISO-8601 in UTC: the date and hour are its prefix
        day, hour = occurred[:10], int(occurred[11:13])
        firsts = {}
        for metric in users:
            if metric.event_types and event["event_type"] not in metric.event_types:
                continue
            key = f"f:{metric.name}:{day}"
            if state.get(key) is None:
                state.set(key, 1)
                firsts[metric.name] = True
        return {
            "day": day,
            "hour": hour,
            "country": event.get("country") or "ZZ",
            "add": _contribution(metrics, event, firsts),
        }

    def add_up(row: dict, state) -> dict:
        """Per hour and country (the new key): the running sums, kept in state."""
        current = state.get("sums") or {}
        for name, value in row["add"].items():
            current[name] = current.get(name, 0) + value
        state.set("sums", current)
        seen["summed"] += 1
        totals[(row["day"], row["hour"], row["country"])] = current
        return row

    def done(_: dict) -> None:
        """Every input message is either a dropped duplicate or summed (after the repartition topic)."""
        if seen["summed"] + seen["duplicates"] >= messages:
            seen["last_at"] = time.monotonic()
            app.stop()

    sdf = app.dataframe(events)
    sdf = sdf.apply(count_input)
    sdf = sdf.apply(dedupe_and_attribute, stateful=True)
    sdf = sdf.filter(lambda row: row is not None)
    sdf = sdf.group_by(lambda row: f"{row['day']}|{row['hour']}|{row['country']}", name="hour_country")
    sdf = sdf.apply(add_up, stateful=True)
    sdf.update(done)
    app.run()
    ended = time.monotonic()
    rows = [
        {"event_date": day, "hour": hour, "country": country, **sums}
        for (day, hour, country), sums in sorted(totals.items())
    ]
    out.write_text(json.dumps(rows))
    return {
        "messages": seen["messages"],
        "events": sum(r.get("events", 0) for r in rows),
        "duplicates": seen["duplicates"],
        "seconds": round(ended - started, 3),
        "first_message_after": round(seen["first_at"] - started, 3) if seen["first_at"] else None,
        "counting_seconds": round((seen["last_at"] or ended) - seen["first_at"], 3) if seen["first_at"] else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, required=True, help="stop once this many messages are processed")
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the counted hourly rows go (JSON)")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    summary = run(
        os.environ["KAFKA_BOOTSTRAP"],
        os.environ["LAMBDAFLOW_TOPIC"],
        args.group,
        args.messages,
        args.out,
        args.state_dir,
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
