"""6. State and files: the speed layer's state per million events, raw files per partition per day, and
a day's raw scan before and after compaction (bench.compaction).

Both are read from runs of the other sections: the state size from the stream
worker of the last ingest repetition, the file count derived from the
archiver's roll policy with measured rates (no section runs the archiver for a
whole day at the default roll settings).
"""

from __future__ import annotations

import math

from bench.compaction import compaction_row
from bench.core import Context, Row, Section
from lambdaflow.core.config import Settings

DAY_SECONDS = 86_400
PARTITIONS = 3
TARGET_STATE_MB_PER_MILLION = 20.0
TARGET_FILES_PER_PARTITION_PER_DAY = 2_880
"""A small-files budget: at most one raw file every 30 s per partition, so a day stays cheap to read."""


def files_per_partition_per_day(rate: float, value_bytes: float, roll_bytes: int, roll_seconds: float) -> int:
    """How many raw files one partition publishes in a day at a steady ``rate`` (events/s, whole topic).

    A partition's buffer becomes a file when it holds ``roll_bytes`` of message
    values or is ``roll_seconds`` old, whichever comes first; the batch that
    spans midnight is split by event date, which adds one file to each day.
    """
    per_partition = rate / PARTITIONS
    fill_seconds = roll_bytes / (per_partition * value_bytes) if per_partition > 0 else math.inf
    return math.ceil(DAY_SECONDS / min(roll_seconds, fill_seconds)) + 1


def run_section(ctx: Context, ingest: dict, freshness: dict) -> Section:
    defaults = Settings.from_env({})
    footprint = ingest["footprint"]
    events = footprint["events"]
    state_mb = (footprint["state_bytes"] + footprint["snapshot_bytes"]) / 1e6 / (events / 1e6)
    raw_mb = footprint["raw_bytes"] / 1e6 / (events / 1e6)
    value_bytes = ingest["produced"]["value_bytes_per_message"]
    measured = (freshness.get("produced") or {}).get("rate")
    rate = measured or ctx.sizes.freshness_rate  # the rate asked, when freshness did not run or failed
    floor = files_per_partition_per_day(0, value_bytes, defaults.archive_roll_bytes, defaults.archive_roll_seconds)
    files = files_per_partition_per_day(rate, value_bytes, defaults.archive_roll_bytes, defaults.archive_roll_seconds)
    rates = sorted({100.0, 1_000.0, round(rate), float(ctx.sizes.freshness_rate), 100_000.0})
    table = {
        r: files_per_partition_per_day(r, value_bytes, defaults.archive_roll_bytes, defaults.archive_roll_seconds)
        for r in rates
    }
    state_met = state_mb <= TARGET_STATE_MB_PER_MILLION
    files_met = files <= TARGET_FILES_PER_PARTITION_PER_DAY
    source = (
        f"derived from the roll policy at the freshness run's {rate:,.0f} events/s, not counted from a run"
        if measured
        else f"derived from the roll policy at {rate:,.0f} events/s (no freshness run)"
    )
    rows = [
        Row(
            id="state.speed_state_per_million",
            what="state: speed layer state per million events",
            figure=round(state_mb, 2),
            unit="MB",
            peer="target",
            peer_figure=TARGET_STATE_MB_PER_MILLION,
            ratio=round(state_mb / TARGET_STATE_MB_PER_MILLION, 3),
            target=f"<= {TARGET_STATE_MB_PER_MILLION:g} MB per million events (ratio: figure / target)",
            met=state_met,
            why=""
            if state_met
            else (
                f"{state_mb:.1f} MB per million events, {state_mb / TARGET_STATE_MB_PER_MILLION:.1f}x the "
                f"{TARGET_STATE_MB_PER_MILLION:g} MB target (after the last ingest repetition's stream worker "
                f"counted {events:,} events; its DuckDB files {footprint['state_bytes'] / 1e6:.1f} MB, "
                f"snapshots {footprint['snapshot_bytes'] / 1e6:.2f} MB)"
            ),
            detail={**footprint, "raw_mb_per_million": round(raw_mb, 2), "state_to_raw": round(state_mb / raw_mb, 3)},
        ),
        Row(
            id="files.raw_per_partition_per_day",
            what="files: raw files per partition per day at the default roll",
            figure=files,
            unit="files",
            peer="the roll-time floor (one file per 300 s)",
            peer_figure=floor,
            ratio=round(files / floor, 3),
            target=f"<= {TARGET_FILES_PER_PARTITION_PER_DAY:,} (one every 30 s)",
            met=files_met,
            why=source if files_met else f"{files:,} files, over the budget of one every 30 s; {source}",
            detail={"rate": rate, "value_bytes_per_message": value_bytes, "by_rate": table, "source": source},
        ),
    ]
    compacted, compaction_text = compaction_row(ctx, files)
    rows.append(compacted)
    text = _text(footprint, state_mb, raw_mb, value_bytes, defaults, table, rate) + compaction_text
    return Section(6, "State and files", rows, text)


def _text(
    footprint: dict, state_mb: float, raw_mb: float, value_bytes: float, defaults: Settings, table: dict, rate: float
) -> str:
    roll_mb = defaults.archive_roll_bytes / 1024 / 1024
    lines = [
        f"After the last ingest repetition, the stream worker's state for {footprint['events']:,} events was "
        f"{footprint['state_bytes'] / 1e6:.1f} MB in its DuckDB files plus {footprint['snapshot_bytes'] / 1e6:.2f} MB "
        f"of snapshots: {state_mb:.1f} MB per million events, against {raw_mb:.1f} MB of raw Parquet per million "
        "(the same events as the archiver published them). The state holds the dedupe keys (an event id per "
        "event, kept per hour until the batch layer covers the day), each user-day's first event and first "
        "signup, and the hourly aggregates. Target: at most "
        f"{TARGET_STATE_MB_PER_MILLION:g} MB per million events.",
        "",
        f"Raw files per partition per day at the default roll ({roll_mb:g} MB of message values or "
        f"{defaults.archive_roll_seconds:g} s, whichever first), derived from the roll policy with the mean "
        f"message value of {value_bytes:g} bytes and a steady rate spread evenly over 3 partitions: a file per "
        "roll, plus one where the batch spanning midnight is split by event date. Dead-letter files are apart. "
        f"Target: at most {TARGET_FILES_PER_PARTITION_PER_DAY:,} a day (one every 30 s), a small-files budget "
        "that keeps a day's raw files cheap to list and read.",
        "",
        "| events/s (topic) | files per partition per day |",
        "|---:|---:|",
    ]
    lines += [f"| {r:,.0f}{' (freshness run)' if r == round(rate) else ''} | {n:,} |" for r, n in table.items()]
    return "\n".join(lines)
