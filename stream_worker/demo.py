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

from stream_worker.config import settings
from stream_worker.output import configure_logging, emit, emit_record
from stream_worker.processes import Service, lambdaflow_command, run_json

log = logging.getLogger("lambdaflow.demo")

DAYS = 7
EVENTS_PER_DAY = 20_000


def main() -> int:
    configure_logging()
    config = settings()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    broker = Service("broker", lambdaflow_command("broker"), env,
                     log_path=config.data_dir / "logs" / "demo-broker.log")
    try:
        broker.start()
        bootstrap = broker.read_line().removeprefix("bootstrap: ")
        log.info("embedded broker at %s; producing %d days of history and today so far", bootstrap, DAYS)
        summary = run_json(
            "produce",
            lambdaflow_command(
                "produce", "--days", str(DAYS), "--events-per-day", str(EVENTS_PER_DAY), "--seed", "42",
                "--duplicates", "0.02", "--out-of-order", "0.02", "--late", "0.005", "--malformed", "0.002",
            ),
            {**env, "KAFKA_BOOTSTRAP": bootstrap},
        )
        emit_record(summary, "table")
        layer_env = {**env, "KAFKA_BOOTSTRAP": bootstrap}
        archived = run_json("archive", lambdaflow_command("archive", "--until-idle"), layer_env)
        counted = run_json("stream", lambdaflow_command("stream", "--until-idle"), layer_env)
        log.info("archived %d messages, counted %d new events", archived["messages"], counted["new_events"])
        emit(_per_day(config), "table")
    except (RuntimeError, TimeoutError) as error:
        log.error("demo failed: %s", error)
        return 1
    finally:
        broker.stop()
    return 0


def _per_day(config) -> list[dict]:
    """Per event date: events in the raw store (with duplicates) and the speed layer's metrics."""
    import duckdb

    raw = config.data_dir / "raw" / "events" / "*" / "*.parquet"
    snapshots = config.data_dir / "speed" / config.topic / "snapshots" / "*.parquet"
    rows = duckdb.execute(f"""
        with raw as (
            select event_date, count(*) as raw_rows
            from read_parquet('{raw}', hive_partitioning = true)
            group by all
        ),
        speed as (
            select event_date, sum(events) as events, sum(new_users) as new_users,
                   sum(active_users) as active_users, sum(orders) as orders, sum(revenue_cents) as revenue_cents
            from read_parquet('{snapshots}')
            group by all
        )
        select cast(event_date as varchar), raw_rows, events, new_users, active_users, orders, revenue_cents
        from raw full outer join speed using (event_date)
        order by event_date
    """).fetchall()
    columns = ["event_date", "raw_rows", "events", "new_users", "active_users", "orders", "revenue_cents"]
    return [dict(zip(columns, row)) for row in rows]


if __name__ == "__main__":
    sys.exit(main())
