"""``python -m bench``: run the sections, write the results, print the table."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import bench
from bench import backfill, batch_build, footprint, freshness, growth, ingest, queries, report, versus
from bench.core import Context, Row, Section, Sizes
from bench.machine import machine, versions
from lambdaflow.core.output import configure_logging
from lambdaflow.core.project import PROJECT_DIR

log = logging.getLogger("lambdaflow.bench")

DEFAULT_OUT = PROJECT_DIR / "bench" / "results"
SECTIONS = ("ingest", "freshness", "batch", "backfill", "queries", "footprint", "growth", "peer")
TITLES = {
    "ingest": (1, "Ingest ceiling"),
    "freshness": (2, "Freshness"),
    "batch": (3, "Batch build"),
    "queries": (4, "Queries"),
    "backfill": (5, "Backfill"),
    "footprint": (6, "State and files"),
    "growth": (7, "State growth"),
    "peer": (8, "Peer: quixstreams"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition: proves the code runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--only", choices=SECTIONS, action="append", help="run only this section (repeatable); footprint needs ingest"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder and print where it is")
    return parser.parse_args(argv)


def _failed(name: str, error: BaseException) -> Section:
    """A section that raised still gets a row, so the summary shows the failure instead of hiding it."""
    number, title = TITLES[name]
    row = Row(
        id=f"{name}.error",
        what=f"{title}: failed",
        figure=None,
        unit="",
        peer="",
        peer_figure=None,
        ratio=None,
        target=None,
        met=False,
        why=f"{type(error).__name__}: {error}".splitlines()[0],
    )
    return Section(number, title, [row], f"The section failed:\n\n```\n{traceback.format_exc()[-3000:]}\n```")


def run_sections(ctx: Context, chosen: tuple[str, ...]) -> list[Section]:
    done: dict[str, Section] = {}
    steps: dict[str, Callable[[], Section]] = {
        "ingest": lambda: ingest.run_section(ctx),
        "freshness": lambda: freshness.run_section(ctx),
        "batch": lambda: batch_build.run_section(ctx),
        "backfill": lambda: backfill.run_section(ctx),
        "queries": lambda: queries.run_section(ctx, _history(done)),
        "footprint": lambda: footprint.run_section(
            ctx, done["ingest"].details, done["freshness"].details if "freshness" in done else {}
        ),
        "growth": lambda: growth.run_section(ctx),
        "peer": lambda: versus.run_section(ctx),
    }
    for name in SECTIONS:
        if name not in chosen:
            continue
        started = time.monotonic()
        log.info("bench: section %d, %s", TITLES[name][0], TITLES[name][1])
        try:
            done[name] = steps[name]()
        except Exception as error:  # record it, go on with the others, fail at the end
            log.error("bench: section %s failed: %s", name, error)
            done[name] = _failed(name, error)
        done[name].seconds = round(time.monotonic() - started, 1)
        log.info("bench: %s took %.0f s", name, done[name].seconds)
    return sorted(done.values(), key=lambda s: s.number)


def _history(done: dict[str, Section]) -> Path | None:
    """The backfill's directly built days, when it ran: the batch half of what the queries read."""
    section = done.get("backfill")
    path = section.details.get("direct_data_dir") if section else None
    return Path(path) if path else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    chosen = tuple(args.only or SECTIONS)
    if "footprint" in chosen and "ingest" not in chosen:
        print(
            "bench: error: --only footprint needs --only ingest too (and uses freshness when it runs)", file=sys.stderr
        )
        return 2
    sizes = Sizes.quick() if args.quick else Sizes.full()
    work = Path(tempfile.mkdtemp(prefix="lambdaflow-bench-"))
    out = args.out.absolute()
    ctx = Context.create(sizes, args.quick, out, work)
    header = {
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "machine": machine(),
        "versions": versions(PROJECT_DIR),
    }
    started = time.monotonic()
    log.info("bench: %s mode, scratch in %s, results to %s", "quick" if args.quick else "full", work, out)
    try:
        sections = run_sections(ctx, chosen)
    finally:
        if args.keep_work:
            log.info("bench: scratch kept in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    header["duration_seconds"] = round(time.monotonic() - started, 1)
    header["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = report.write(out, header, sections)
    report.print_table(summary["rows"])
    print(
        f"{len(summary['rows'])} rows in {header['duration_seconds'] / 60:.1f} min; "
        f"{out / 'report.md'}, {out / 'summary.json'}"
    )
    failed = [row["id"] for row in summary["rows"] if row["id"].endswith(".error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
