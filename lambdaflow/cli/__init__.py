"""The `lambdaflow` command: a thin shell over the library.

Results go to stdout (JSON lines unless ``--format table``); progress and logs
go to stderr. An error the user can fix prints one line and exits 1; a usage
error exits 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import click

from lambdaflow.cli.answers import query, reconcile, serve, status
from lambdaflow.cli.options import format_option
from lambdaflow.core.config import Settings, settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.output import ProgressBar, configure_logging, emit, emit_record

log = logging.getLogger("lambdaflow")

_share = click.FloatRange(0.0, 1.0)
LIVE_RATE = 5.0
"""Events per second `produce --live` sends unless --rate says otherwise."""
_HISTORY_OPTIONS = ("days", "events_per_day", "until", "duplicates", "out_of_order", "late", "malformed")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail to stderr.")
@click.version_option(package_name="lambdaflow")
def cli(verbose: bool) -> None:
    """lambdaflow: a Lambda-architecture analytics pipeline on Kafka, dbt-duckdb, Airflow and Polars.

    \b
    Environment:
      KAFKA_BOOTSTRAP      a real Kafka's bootstrap servers (default: the embedded broker)
      LAMBDAFLOW_TOPIC     the events topic (default: events)
      LAMBDAFLOW_DATA_DIR  where every file goes (default: data/)
    """
    configure_logging(verbose)
    settings()  # a bad environment fails here, before any work starts


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 (default: a free one).")
def broker(port: int | None) -> None:
    """Run the embedded Kafka-compatible broker on 127.0.0.1 until stopped.

    Starts Tansu (memory-only: a restart loses the log, the raw store keeps the
    events), creates the topic, prints `bootstrap: 127.0.0.1:PORT` and serves
    until SIGINT or SIGTERM. Other lambdaflow commands find it through
    LAMBDAFLOW_DATA_DIR; KAFKA_BOOTSTRAP, when set, wins over it.
    """
    from lambdaflow.kafka.broker import BrokerAnnouncement, EmbeddedBroker
    from lambdaflow.kafka.clients import ensure_topic

    config = settings()
    running = BrokerAnnouncement.read(config.broker_file)
    if running is not None and running.is_alive():
        raise LambdaflowError(
            f"an embedded broker already serves {running.bootstrap} (pid {running.pid}) for {config.data_dir}"
        )
    if config.kafka_bootstrap:
        log.warning("KAFKA_BOOTSTRAP is set: other commands will use %s, not this broker", config.kafka_bootstrap)

    stop = _stop_on_signals()
    embedded = EmbeddedBroker(port, log_path=config.layout.broker_log)
    embedded.start()
    process = embedded.process
    assert process is not None  # started
    announcement = BrokerAnnouncement(embedded.bootstrap, os.getpid(), process.pid)
    try:
        ensure_topic(embedded.bootstrap, config.topic, config.partitions)
        announcement.write(config.broker_file)
        click.echo(f"bootstrap: {embedded.bootstrap}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            if process.poll() is not None:
                raise LambdaflowError(
                    f"the embedded broker exited with code {process.returncode}; see {embedded.log_path}"
                )
        log.info("stopping the embedded broker")
    finally:
        if BrokerAnnouncement.read(config.broker_file) == announcement:
            config.broker_file.unlink(missing_ok=True)
        embedded.stop()


@cli.command()
@click.option(
    "--days", type=click.IntRange(0, 3660), default=7, show_default=True, help="Whole UTC days of history before today."
)
@click.option(
    "--events-per-day",
    type=click.IntRange(0),
    default=10_000,
    show_default=True,
    help="Distinct valid events per whole day; today gets its share so far.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed, same events.")
@click.option(
    "--until", "until", metavar="ISO-8601", help="Where 'today so far' ends, e.g. 2026-11-27T12:00:00Z (default: now)."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help=f"At most this many messages per second (--live: default {LIVE_RATE:g}).",
)
@click.option(
    "--live", is_flag=True, help="Send valid events stamped with the current time, at --rate, until SIGINT/SIGTERM."
)
@click.option("--duplicates", type=_share, default=0.0, show_default=True, help="Share of events sent twice.")
@click.option(
    "--out-of-order", type=_share, default=0.0, show_default=True, help="Share of messages sent up to 500 places early."
)
@click.option(
    "--late", type=_share, default=0.0, show_default=True, help="Share of events held back and sent after all others."
)
@click.option(
    "--malformed",
    type=_share,
    default=0.0,
    show_default=True,
    help="Share of extra messages that break the contract, one kind after another.",
)
@format_option
def produce(
    days: int,
    events_per_day: int,
    seed: int,
    until: str | None,
    rate: float | None,
    duplicates: float,
    out_of_order: float,
    late: float,
    malformed: float,
    live: bool,
    fmt: str,
) -> None:
    """Send deterministic synthetic events (key = user_id, lz4) and print a summary.

    Covers the UTC days from `--days` before today up to `--until`, in time order,
    with the chosen shares of duplicates, disorder, late and malformed messages.
    With `--live`, sends valid events as they happen, at `--rate` per second,
    until SIGINT or SIGTERM, then prints the summary.
    """
    from lambdaflow.kafka.broker import resolve_bootstrap
    from lambdaflow.synthetic import generator
    from lambdaflow.synthetic.producer import produce as send_events

    if live:
        _produce_live(seed, rate or LIVE_RATE, fmt)
        return
    config = settings()
    end = datetime.now(UTC) if until is None else _parse_instant("--until", until)
    options = generator.Options(
        days=days,
        events_per_day=events_per_day,
        seed=seed,
        until=end,
        duplicates=duplicates,
        out_of_order=out_of_order,
        late=late,
        malformed=malformed,
    )
    bootstrap = resolve_bootstrap(config)
    log.info("producing to %s at %s (seed %d)", config.topic, bootstrap, seed)
    with ProgressBar(f"produce {config.topic}") as bar:
        summary = send_events(bootstrap, config.topic, config.partitions, options, rate, bar.update)
    emit_record(summary.as_dict(), fmt)


def _produce_live(seed: int, rate: float, fmt: str) -> None:
    """`produce --live`: the history options make no sense for events stamped now, so they are refused."""
    from lambdaflow.kafka.broker import resolve_bootstrap
    from lambdaflow.synthetic.producer import produce_live

    context = click.get_current_context()
    given = [
        f"--{name.replace('_', '-')}"
        for name in _HISTORY_OPTIONS
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
    if given:
        raise click.UsageError(f"--live sends valid events stamped now; it takes no {', '.join(given)}")
    config = settings()
    bootstrap = resolve_bootstrap(config)
    stop = _stop_on_signals()
    log.info(
        "producing live to %s at %s, %g events/s (seed %d) until SIGINT/SIGTERM", config.topic, bootstrap, rate, seed
    )
    summary = produce_live(bootstrap, config.topic, config.partitions, seed, rate, stop)
    emit_record(summary.as_dict(), fmt)


@cli.command()
@click.option("--until-idle", is_flag=True, help="Stop once every assigned partition is archived up to its end.")
@click.option(
    "--verify",
    is_flag=True,
    help="Archive nothing: check that the raw store holds exactly the log's valid messages "
    "(and the dead letter its rejects), one JSON line per partition; exit 1 on any difference.",
)
@format_option
def archive(until_idle: bool, verify: bool, fmt: str) -> None:
    """Land every message once in the raw store (consumer group `archiver`).

    Valid events go to the Delta table tables/raw/<topic>/events (on
    LAMBDAFLOW_STORAGE_URL), rejects to its dead_letter table, each batch one
    commit that also moves the partition's resume point. Runs until
    SIGINT/SIGTERM, or with --until-idle until caught up. Prints a JSON
    summary on exit.
    """
    if verify:
        _verify_archive(fmt)
        return
    from lambdaflow.batch.commands import archive as run_archive

    _consume(lambda config, bootstrap, stop: run_archive(config, bootstrap, stop, until_idle), fmt)


def _verify_archive(fmt: str) -> None:
    from lambdaflow.batch.commands import verify_archive
    from lambdaflow.kafka.broker import resolve_bootstrap

    config = settings()
    reports = verify_archive(config, resolve_bootstrap(config))
    emit(reports, fmt)
    wrong = [r["partition"] for r in reports if not r["ok"]]
    if wrong:
        raise LambdaflowError(f"the raw store differs from the log on partitions {wrong}: see the report above")
    log.info("the raw store holds exactly the log's valid messages up to each resume offset")


@cli.command()
@click.option("--until-idle", is_flag=True, help="Stop once every assigned partition is counted up to its end.")
@click.option(
    "--replay",
    is_flag=True,
    help="First rebuild the state from the start of the log into a fresh copy, then switch to it "
    "atomically (no other stream worker may run).",
)
@format_option
def stream(until_idle: bool, replay: bool, fmt: str) -> None:
    """Keep hourly metrics fresh from the log (consumer group `speed`).

    Each micro-batch (up to 50k messages or 250 ms) is counted exactly once
    into the partition's state under speed/, and the partition's snapshot is
    replaced for the serving layer. Runs until SIGINT/SIGTERM, or with
    --until-idle until caught up. Prints a JSON summary on exit.
    """
    from stream_worker.commands import stream as run_stream

    _consume(lambda config, bootstrap, stop: run_stream(config, bootstrap, stop, until_idle, replay), fmt)


@cli.command()
@click.option("--date", "day", metavar="YYYY-MM-DD", help="Build this UTC day (the run's data interval).")
@click.option("--from", "first", metavar="YYYY-MM-DD", help="With --to: build these whole UTC days in one dbt build.")
@click.option("--to", "last", metavar="YYYY-MM-DD", help="The last day of --from's range (inclusive).")
@click.option("--today", is_flag=True, help="Build the complete hours of today so far (the manual DAG).")
@click.option("--late", is_flag=True, help="Rebuild every built day that has raw events archived after its build.")
@format_option
def batch(day: str | None, first: str | None, last: str | None, today: bool, late: bool, fmt: str) -> None:
    """Run the Airflow batch DAG in process: `--date D`, `--from D1 --to D2`, `--today` or `--late`.

    `--date D` runs lambda_batch for day D: dbt build over D's raw files, then
    the built hours are published with the new serving boundary, then D is
    reconciled with the speed layer. It fails at once, saying why, when the
    archiver has not seen the whole day yet. `--from D1 --to D2` runs
    lambda_batch_range: one dbt build for the whole days D1 to D2, then each day
    published and reconciled as `--date` does. `--today` runs lambda_batch_today
    for the complete hours so far. `--late` runs lambda_batch_late: every whole
    built day whose raw store gained files after its build is rebuilt.
    """
    from lambdaflow.batch.runner import run_batch, run_late, run_range

    ranged = first is not None or last is not None
    if [day is not None, ranged, today, late].count(True) != 1 or (ranged and None in (first, last)):
        raise click.UsageError("give exactly one of --date D, --from D1 --to D2 (YYYY-MM-DD), --today or --late")
    verbose = bool(click.get_current_context().find_root().params.get("verbose"))
    output = None if verbose else settings().layout.logs / "batch.log"
    if ranged:
        manifest = run_range(settings(), str(first), str(last), airflow_log=output)
    elif late:
        manifest = run_late(settings(), airflow_log=output)
    else:
        manifest = run_batch(settings(), day=day, airflow_log=output)
    emit_record(manifest, fmt)


@cli.command()
@click.option(
    "--keep-hours",
    type=click.IntRange(min=1),
    default=168,
    show_default=True,
    help="Keep every file a table version of this many hours needs.",
)
@click.option("--dry-run", is_flag=True, help="Count the files that would go; remove nothing.")
@format_option
def maintain(keep_hours: int, dry_run: bool, fmt: str) -> None:
    """Vacuum and checkpoint the raw tables, as the lambda_tables_maintenance DAG does daily.

    Removes the files no table version of the kept period needs (never one
    of the current version), then checkpoints each table. One JSON line per table.
    """
    from lambdaflow.batch.maintenance import maintain_tables

    emit(maintain_tables(settings(), keep=timedelta(hours=keep_hours), dry_run=dry_run), fmt)


for command in (query, reconcile, status, serve):
    cli.add_command(command)


def _consume(run: Callable[[Settings, str, threading.Event], dict], fmt: str) -> None:
    """A consumer command: find the broker, create the topic unless it exists, run until SIGINT or
    SIGTERM (or caught up), print the summary."""
    from lambdaflow.kafka.broker import resolve_bootstrap
    from lambdaflow.kafka.clients import ensure_topic

    config = settings()
    bootstrap = resolve_bootstrap(config)
    ensure_topic(bootstrap, config.topic, config.partitions)
    emit_record(run(config, bootstrap, _stop_on_signals()), fmt)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _parse_instant(option: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO-8601 date and time", param_hint=option) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def main() -> None:
    try:
        exit_code = cli.main(prog_name="lambdaflow", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("lambdaflow: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except LambdaflowError as error:
        click.echo(f"lambdaflow: error: {' '.join(str(error).split())}", err=True)  # one line, always
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("lambdaflow: interrupted", err=True)
        sys.exit(130)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
