"""The benchmark's own child processes: ``python -m bench.child <command>``.

Each runs in a process of its own so that the benchmark can read its wall
time and peak RSS from the outside, exactly as for the `lambdaflow` commands
it is compared with. Results go to stdout as JSON, logs to stderr.

* ``bare-consume``: the ingest ceiling, a kafka-python consumer that only polls;
* ``crc-check``: which CRC32C kafka-python checks records with in the workers' interpreter;
* ``bare-query``: the bare DuckDB query the serving answers are compared with, in a process of its own;
* ``produce-paced``: sends pre-drawn events at a fixed rate, logging when each left;
* ``build``: dbt builds of whole days as the batch DAG runs them, keeping dbt's run_results;
* ``rebuild-loop``: rebuilds one day until stopped (load for the query benchmark);
* ``hand-sql``: the hand-written DuckDB statement the dbt models are compared with;
* ``prepare-airflow``: creates the Airflow database and pool once, as `lambdaflow batch` does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lambdaflow.core.output import configure_logging

_results = sys.stdout


def _emit(record: dict) -> None:
    _results.write(json.dumps(record) + "\n")
    _results.flush()


def _keep_stdout_for_results() -> None:
    """Point file descriptor 1 at stderr, keeping the real stdout for results: dbt and Airflow
    print progress to stdout."""
    global _results
    sys.stdout.flush()
    _results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


# ingest ceiling


def crc_check() -> str:
    """Which CRC32C kafka-python checks record batches with in this interpreter: "C" (the crc32c
    package, which kafka-python uses whenever it imports) or "Python" (its pure-Python fallback)."""
    from kafka.record import util

    return "C" if util.crc32c_c is not None else "Python"


def bare_consume(group: str) -> None:
    """Poll every message of the topic and nothing else, stopping when caught up as `--until-idle` does:
    once it owns every partition and has read each up to its high watermark."""
    from kafka import TopicPartition

    from lambdaflow.kafka import clients

    bootstrap, topic = os.environ["KAFKA_BOOTSTRAP"], os.environ["LAMBDAFLOW_TOPIC"]
    started = time.monotonic()
    consumer = clients.consumer(bootstrap, group, session_timeout_ms=6000, heartbeat_interval_ms=1500)
    consumer.subscribe([topic])
    messages, value_bytes, positions = 0, 0, {}
    first_at = None
    try:
        while True:
            polled = consumer.poll(timeout_ms=500)
            for tp, records in polled.items():
                if records:
                    first_at = first_at or time.monotonic()
                    messages += len(records)
                    value_bytes += sum(len(r.value or b"") for r in records)
                    positions[tp.partition] = records[-1].offset + 1
            assigned = {tp.partition for tp in consumer.assignment()}
            partitions = consumer.partitions_for_topic(topic) or set()
            ends = {p: consumer.highwater(TopicPartition(topic, p)) for p in assigned}
            if (
                assigned
                and assigned >= partitions
                and all(end is not None and positions.get(p, 0) >= end for p, end in ends.items())
            ):
                break
    finally:
        consumer.close()
    _emit(
        {
            "messages": messages,
            "value_bytes": value_bytes,
            "seconds": round(time.monotonic() - started, 3),
            "first_message_after": round(first_at - started, 3) if first_at else None,
            "crc32c": crc_check(),
        }
    )


# freshness


def produce_paced(rate: float, seconds: float, seed: int, send_log: Path, partition: int | None = None) -> None:
    """Draw rate x seconds events first, say `ready`, wait for SIGUSR1, then send at ``rate`` for ``seconds``.

    With ``partition``, every event goes to that partition, from users of this
    producer's own (ids ``user-p<partition>-...``), so that each user still lives
    in one partition: several producers, one per partition, reach a rate that one
    kafka-python producer sharing two cores cannot.

    When the producer cannot keep up, it sends what it can in that time (the
    benchmark reports the rate reached). Every 100 messages it notes the
    wall-clock time and how many it has handed to the client so far, overall
    and per partition; the benchmark matches those with what serving shows.
    """
    from bench.events import kafka_messages
    from lambdaflow.kafka import clients

    bootstrap, topic = os.environ["KAFKA_BOOTSTRAP"], os.environ["LAMBDAFLOW_TOPIC"]
    total = int(rate * seconds)
    users = "user-" if partition is None else f"user-p{partition}-"
    batch = kafka_messages(total, seed, datetime.now(UTC), timedelta(minutes=1), 3, users)
    if partition is not None:
        batch.partitions[:] = [partition] * total
    producer = clients.producer(bootstrap)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    _emit({"ready": True, "messages": total})
    signal.sigwait([signal.SIGUSR1])
    checkpoints: list[tuple[float, int, list[int]]] = []
    per_partition = [0, 0, 0]
    send = producer.send
    started = time.time()
    deadline = started + seconds
    sent = 0
    while sent < total and time.time() < deadline:
        due = min(total, int((time.time() - started) * rate) + 1)
        if sent >= due:
            time.sleep(0.0005)
            continue
        while sent < due:
            partition = batch.partitions[sent]
            send(topic, key=batch.keys[sent], value=batch.values[sent], partition=partition)
            per_partition[partition] += 1
            sent += 1
            if sent % 100 == 0 or sent == total:
                now = time.time()
                checkpoints.append((now, sent, list(per_partition)))
                if now >= deadline:
                    break
    finished_sending = time.time()
    if not checkpoints or checkpoints[-1][1] != sent:
        checkpoints.append((finished_sending, sent, list(per_partition)))
    producer.flush()
    producer.close()
    send_log.write_text(json.dumps({"checkpoints": checkpoints}))
    _emit(
        {
            "messages": sent,
            "asked": total,
            "value_bytes": sum(len(v) for v in batch.values[:sent]),
            "started_at": started,
            "send_seconds": round(finished_sending - started, 3),
            "rate": round(sent / max(finished_sending - started, 1e-9), 1),
        }
    )


# queries


def run_bare_query(files: Path) -> None:
    """Import DuckDB and run the bare query once, as a user's own script over the published files would."""
    import duckdb

    from bench.bare_query import SETTINGS, Files, pinned, statement

    started = time.monotonic()
    with duckdb.connect() as con, pinned(Files.load(files)) as files_now:
        sql, values = statement(files_now)
        con.execute(SETTINGS).fetchall()
        rows = con.execute(sql, values).fetchall()
    _emit({"days": len(rows), "seconds": round(time.monotonic() - started, 4)})


# batch


def _keep_run_results(sink: list[dict]) -> None:
    """After each `dbt build`, keep its run_results.json: the export that follows overwrites it."""
    from lambdaflow.batch import dbt

    target = Path(os.environ["DBT_TARGET_PATH"])

    def keep(args: tuple[str, ...]) -> None:
        if args and args[0] == "build":
            sink.append(json.loads((target / "run_results.json").read_text()))

    dbt.AFTER_EACH_RUN.append(keep)


def model_timings(run_results: dict) -> dict[str, object]:
    """Seconds per model and for the tests, from one dbt run_results document."""
    models, tests = {}, 0.0
    for result in run_results.get("results", []):
        kind, _, name = result["unique_id"].partition(".")
        if kind == "model":
            models[name.split(".", 1)[1]] = round(result["execution_time"], 3)
        elif kind in ("test", "unit_test"):
            tests += result["execution_time"]
    return {
        "models": models,
        "model_seconds": round(sum(models.values()), 3),
        "test_seconds": round(tests, 3),
        "dbt_elapsed_seconds": round(run_results.get("elapsed_time", 0.0), 3),
    }


def build(days: list[str]) -> None:
    """Build and publish each day in this one process, as the DAG's build task (or a backfill) does."""
    from lambdaflow.batch.build import build_day
    from lambdaflow.core.config import settings

    kept: list[dict] = []
    _keep_run_results(kept)
    config = settings()
    for day in days:
        started = time.monotonic()
        build_day(config, date.fromisoformat(day))
        _emit({"day": day, "seconds": round(time.monotonic() - started, 3), **model_timings(kept[-1])})


def rebuild_loop(day: str) -> None:
    """Rebuild one day again and again until stopped: a writer for the query benchmark to read beside."""
    from lambdaflow.batch.build import build_day
    from lambdaflow.core.config import settings

    stop = _stop_event()
    builds = 0
    while not stop.is_set():
        build_day(settings(), date.fromisoformat(day))
        builds += 1
        _emit({"built": builds})
    _emit({"builds": builds})


def hand_sql(day: str, database: Path) -> None:
    """Run the hand-written statement over the day's covered raw files into ``database``."""
    import duckdb

    from bench.handwritten import HOURLY_SQL
    from lambdaflow.core.config import settings
    from lambdaflow.core.raw_store import RawStore

    config = settings()
    files = [str(path) for path in RawStore(config.data_dir, config.topic).files_for_date(date.fromisoformat(day))]
    with duckdb.connect(str(database)) as con:
        con.execute("set TimeZone = 'UTC'")
        started = time.monotonic()
        con.execute(HOURLY_SQL, {"files": files, "day": day})
        seconds = time.monotonic() - started
        rows = con.execute("select count(*) from hourly_metrics").fetchall()[0][0]
    _emit({"day": day, "seconds": round(seconds, 3), "rows": rows, "files": len(files)})


def prepare_airflow() -> None:
    """In a child, since preparing Airflow sets its variables in the environment of the process."""
    from lambdaflow.batch import airflow_home
    from lambdaflow.core.config import settings

    started = time.monotonic()
    airflow_home.prepare(settings())
    _emit({"seconds": round(time.monotonic() - started, 3)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.child")
    commands = parser.add_subparsers(dest="command", required=True)
    bare = commands.add_parser("bare-consume")
    bare.add_argument("--group", required=True)
    paced = commands.add_parser("produce-paced")
    paced.add_argument("--rate", type=float, required=True)
    paced.add_argument("--seconds", type=float, required=True)
    paced.add_argument("--seed", type=int, default=7)
    paced.add_argument("--send-log", type=Path, required=True)
    paced.add_argument("--partition", type=int, help="send every event to this partition")
    builder = commands.add_parser("build")
    builder.add_argument("--day", action="append", required=True)
    loop = commands.add_parser("rebuild-loop")
    loop.add_argument("--day", required=True)
    hand = commands.add_parser("hand-sql")
    hand.add_argument("--day", required=True)
    hand.add_argument("--database", type=Path, required=True)
    commands.add_parser("prepare-airflow")
    commands.add_parser("crc-check")
    bare_query = commands.add_parser("bare-query")
    bare_query.add_argument("files", type=Path, help="the JSON of bench.bare_query.Files")
    args = parser.parse_args(argv)
    configure_logging()
    _keep_stdout_for_results()
    if args.command == "bare-consume":
        bare_consume(args.group)
    elif args.command == "produce-paced":
        produce_paced(args.rate, args.seconds, args.seed, args.send_log, args.partition)
    elif args.command == "build":
        build(args.day)
    elif args.command == "rebuild-loop":
        rebuild_loop(args.day)
    elif args.command == "hand-sql":
        hand_sql(args.day, args.database)
    elif args.command == "bare-query":
        run_bare_query(args.files)
    elif args.command == "crc-check":
        _emit({"crc32c": crc_check(), "executable": sys.executable})
    else:
        prepare_airflow()
    return 0


if __name__ == "__main__":
    sys.exit(main())
