"""A few weeks of small days in the raw store, and the dbt builds of them run directly.

Shared by the backfill benchmark (the direct range build is its baseline) and
the query benchmark (the built days are the batch half of what it reads).
``python -m bench.history --from D1 --to D2`` is the direct range build: one
process, one `lambdaflow.batch.build.build_days`, its seconds as a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bench.batch_build import dbt_env
from bench.core import Context
from bench.events import write_manifests, write_raw_day
from bench.procs import bench_command, run

SEED = 5


def past_days(count: int) -> list[date]:
    """The ``count`` closed UTC days before today, oldest first."""
    today = datetime.now(UTC).date()
    return [today - timedelta(days=count - i) for i in range(count)]


def write_history(data_dir: Path, days: list[date], events_per_day: int) -> None:
    offsets: dict[int, int] = {}
    for index, day in enumerate(days):
        write_raw_day(data_dir, day, events_per_day, SEED + index, first_offsets=offsets)
    write_manifests(data_dir, offsets)


@dataclass(frozen=True)
class DirectBuilds:
    """The builds of one process: its wall time and peak RSS, and each day's own timings."""

    wall_seconds: float
    peak_rss_mb: float
    days: list[dict]


def build_directly(ctx: Context, data_dir: Path, days: list[date], name: str) -> DirectBuilds:
    """Build and publish every day in one process, one `dbt build` each, as a loop over the DAG's task would."""
    args = [a for day in days for a in ("--day", day.isoformat())]
    done = run(
        name, bench_command("build", *args), dbt_env(ctx, data_dir, name), ctx.folder(name, "logs"), timeout=7200
    )
    return DirectBuilds(
        round(done.wall_seconds, 3),
        round(done.peak_rss_mb, 1),
        [json.loads(line) for line in done.stdout.strip().splitlines()],
    )


def build_range_directly(ctx: Context, data_dir: Path, days: list[date], name: str) -> DirectBuilds:
    """Build and publish the days as one range build (one `dbt build`, one export) in one process."""
    args = [sys.executable, "-m", "bench.history", "--from", days[0].isoformat(), "--to", days[-1].isoformat()]
    done = run(name, args, dbt_env(ctx, data_dir, name), ctx.folder(name, "logs"), timeout=7200)
    return DirectBuilds(
        round(done.wall_seconds, 3),
        round(done.peak_rss_mb, 1),
        [json.loads(line) for line in done.stdout.strip().splitlines()],
    )


def main(argv: list[str] | None = None) -> int:
    """The direct range build, as the benchmark's child: dbt's output goes to stderr, the timing to stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.history")
    parser.add_argument("--from", dest="first", required=True)
    parser.add_argument("--to", dest="last", required=True)
    args = parser.parse_args(argv)
    from lambdaflow.batch.build import build_days
    from lambdaflow.batch.runner import stdout_to_stderr
    from lambdaflow.core.config import settings
    from lambdaflow.core.output import configure_logging

    configure_logging()
    first, last = date.fromisoformat(args.first), date.fromisoformat(args.last)
    started = time.monotonic()
    with stdout_to_stderr():
        build_days(settings(), first, last)
    seconds = time.monotonic() - started
    print(
        json.dumps({"from": args.first, "to": args.last, "days": (last - first).days + 1, "seconds": round(seconds, 3)})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
