"""`make demo`: the pipeline end to end on the embedded default.

Starts the embedded broker, produces a week of history plus today so far
(with duplicates, disorder, late and malformed messages), runs the archiver
and the stream worker until they have caught up, prints what each layer
holds per day, and stops everything it started.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime, timedelta

from lambdaflow.core.config import settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.output import configure_logging, emit, emit_record
from lambdaflow.ops.processes import Child, lambdaflow_command, run_json

log = logging.getLogger("lambdaflow.demo")

DAYS = 7
EVENTS_PER_DAY = 20_000


def main() -> int:
    configure_logging()
    config = settings()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    broker = Child("broker", lambdaflow_command("broker"), env, config.layout.logs / "demo-broker.log").start()
    try:
        bootstrap = broker.read_line().removeprefix("bootstrap: ")
        log.info("embedded broker at %s; producing %d days of history and today so far", bootstrap, DAYS)
        summary = run_json(
            "produce",
            lambdaflow_command(
                "produce",
                "--days",
                str(DAYS),
                "--events-per-day",
                str(EVENTS_PER_DAY),
                "--seed",
                "42",
                "--duplicates",
                "0.02",
                "--out-of-order",
                "0.02",
                "--late",
                "0.005",
                "--malformed",
                "0.002",
            ),
            {**env, "KAFKA_BOOTSTRAP": bootstrap},
        )
        emit_record(summary, "table")
        layer_env = {**env, "KAFKA_BOOTSTRAP": bootstrap}
        archived = run_json("archive", lambdaflow_command("archive", "--until-idle"), layer_env)
        counted = run_json("stream", lambdaflow_command("stream", "--until-idle"), layer_env)
        log.info("archived %d messages, counted %d new events", archived["messages"], counted["new_events"])
        _run_batches(config)
        _answer(config, summary["events_per_date"])
    except (RuntimeError, TimeoutError, LambdaflowError) as error:
        log.error("demo failed: %s", error)
        return 1
    finally:
        broker.stop()
    return 0


def _run_batches(config) -> None:
    """The batch DAG for each closed day, then the manual run for today, in this process."""
    from lambdaflow.batch.runner import run_batch
    from lambdaflow.core.errors import LambdaflowError

    today = datetime.now(UTC).date()
    output = config.layout.logs / "batch.log"
    log.info("Airflow's and dbt's log: %s", output)
    for days_ago in range(DAYS, 0, -1):
        day = today - timedelta(days=days_ago)
        log.info("batch for %s (%d of %d)", day, DAYS - days_ago + 1, DAYS)
        run_batch(config, day=day.isoformat(), airflow_log=output)
    try:
        manifest = run_batch(config, day=None, airflow_log=output)
        log.info("batch for today so far: boundary now %s", manifest["boundary"])
    except LambdaflowError as error:  # just after midnight no hour of today is complete
        log.warning("no batch for today yet: %s", error)


def _answer(config, produced: dict[str, int]) -> None:
    """Print the week and the two questions; fail unless each day serves what was produced."""
    from lambdaflow.serving.query import Question, answer

    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    week = answer(config, Question(today - timedelta(days=DAYS), today))
    emit(week, "table")
    by_day = {row["event_date"]: row for row in week}
    wrong = {
        day: (row["events"], produced.get(day, 0))
        for day, row in by_day.items()
        if row["events"] != produced.get(day, 0)
    }
    if wrong:
        raise RuntimeError(f"served events differ from the producer's summary (served, produced): {wrong}")
    log.info("every day serves exactly the distinct valid events the producer sent")
    emit(
        [
            {
                "question": "new users yesterday",
                "event_date": yesterday.isoformat(),
                "new_users": by_day[yesterday.isoformat()]["new_users"],
                "source": by_day[yesterday.isoformat()]["source"],
            },
            {
                "question": "new users today so far",
                "event_date": today.isoformat(),
                "new_users": by_day[today.isoformat()]["new_users"],
                "source": by_day[today.isoformat()]["source"],
            },
        ],
        "table",
    )


if __name__ == "__main__":
    sys.exit(main())
