"""The `lambdaflow` commands that answer from published files: `query`, `reconcile`, `status`, `serve`."""

from __future__ import annotations

import click

from lambdaflow.cli import tables
from lambdaflow.cli.options import format_option
from lambdaflow.core.config import settings
from lambdaflow.core.days import today as today_utc
from lambdaflow.core.output import emit, emit_record, emit_table


@click.command()
@click.option(
    "--from", "date_from", metavar="YYYY-MM-DD", help="First UTC day (inclusive; default: 6 days before --to)."
)
@click.option("--to", "date_to", metavar="YYYY-MM-DD", help="Last UTC day (inclusive; default: today).")
@click.option("--hourly", is_flag=True, help="One row per UTC hour with events, `hour` 0-23.")
@click.option("--country", metavar="CC", help="Only this country (two capital letters; ZZ: unknown).")
@format_option
def query(date_from: str | None, date_to: str | None, hourly: bool, country: str | None, fmt: str) -> None:
    """Serving answers over both layers, per UTC day (or hour); the last 7 days by default.

    Hours before the serving boundary come from the batch layer, hours from it
    on from the speed layer; `source` says which (`mixed`: a day served from
    both). Runs the serving model's SQL in process over published files only.
    A range spans at most 3660 days and ends at most 366 days after today.
    """
    from lambdaflow.core.boundary import read_manifest
    from lambdaflow.serving.query import answer, ask

    rows = answer(settings(), ask(date_from, date_to, hourly, country))
    if fmt == "json":
        emit(rows, fmt)
        return
    shown, lines, caption = tables.query_rows(rows, read_manifest(settings().documents).get("boundary"))
    emit_table(shown, caption, lines)


@click.command()
@click.option("--date", "day", required=True, metavar="YYYY-MM-DD", help="The UTC day to compare.")
@format_option
def reconcile(day: str, fmt: str) -> None:
    """Batch vs speed for one built day, per metric: both totals, the difference, the parts that late
    events and the speed layer's lag explain, and the hours that differ. Writes the report to
    batch/reconcile/D.json; exits 1 when the unexplained part is above LAMBDAFLOW_RECONCILE_THRESHOLD."""
    from lambdaflow.core.days import parse_day
    from lambdaflow.serving.reconcile import reconcile as compare
    from lambdaflow.serving.reconcile import require_within_threshold

    config = settings()
    rows = compare(config, parse_day(day, "--date", latest=today_utc()))
    if fmt == "json":
        emit(rows, fmt)
    else:
        shown, caption = tables.reconcile_rows(rows)
        emit_table(shown, caption)
    require_within_threshold(rows, config.reconcile_threshold)


@click.command()
@format_option
def status(fmt: str) -> None:
    """Where each layer stands: lag and watermarks per partition, boundary, last build, dead letter.

    Read from the files the workers and the batch publish; it opens no state file
    and needs no broker.
    """
    from lambdaflow.serving.status import partition_rows
    from lambdaflow.serving.status import status as read_status

    report = read_status(settings())
    if fmt == "json":
        emit([report], fmt)
        return
    emit(partition_rows(report), fmt)
    emit_record({k: v for k, v in report.items() if k != "partitions"}, fmt)


@click.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port on 127.0.0.1 (default: LAMBDAFLOW_SERVE_PORT, else 8082; 0: a free one).",
)
def serve(port: int | None) -> None:
    """Serve answers, status, a dashboard and Prometheus metrics over HTTP on 127.0.0.1.

    `/api/query` answers what `query` prints, `/api/status` what `status` prints; `/metrics`,
    `/healthz` and the dashboard at `/`. Prints `serving: http://127.0.0.1:PORT` once it answers;
    runs until SIGINT or SIGTERM.
    """
    from lambdaflow.serving.server import serve as run_server

    config = settings()
    run_server(config, config.serve_port if port is None else port, announce=lambda url: click.echo(f"serving: {url}"))
