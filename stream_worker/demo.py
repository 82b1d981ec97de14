"""`make demo`: the pipeline end to end on the embedded default.

Starts the embedded broker, produces a week of history plus today so far
(with duplicates, disorder, late and malformed messages), prints what was
sent, and stops everything it started.
"""

from __future__ import annotations

import logging
import os
import sys

from stream_worker.config import settings
from stream_worker.output import configure_logging, emit_record
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
    except (RuntimeError, TimeoutError) as error:
        log.error("demo failed: %s", error)
        return 1
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
