"""A small world of published files, as the batch and speed layers leave them: no Kafka, no dbt.

Six built days (the two oldest before `page_views` existed), today built until a boundary hour,
and three partitions' snapshots holding yesterday and today.
"""

from __future__ import annotations

import os
import random
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl

from lambdaflow.core import metrics
from lambdaflow.core.config import Settings
from lambdaflow.core.files import read_json, replace_json

TODAY = date(2026, 11, 27)
DAYS = [TODAY - timedelta(days=n) for n in range(6, 0, -1)]  # closed, built days
COUNTRIES = ["DE", "FR", "ZZ"]
NAMES = metrics.names()


def cells(rng: random.Random, day: date, hours: range, names: tuple[str, ...]) -> list[dict]:
    return [
        {"event_date": day, "hour": hour, "country": country, **{m: rng.randint(0, 40) for m in names}}
        for hour in hours
        for country in COUNTRIES
        if rng.random() < 0.8
    ]


def _write(frame_rows: list[dict], path: Path, extra: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    frame = pl.DataFrame(frame_rows).with_columns(pl.col("hour").cast(pl.Int32))
    if extra:
        frame = frame.with_columns(**{k: pl.lit(v) for k, v in extra.items()})
    frame.write_parquet(temp)
    os.replace(temp, path)  # as the layers publish: whole files only


def publish_day(data_dir: Path, day: date, rows: list[dict], until: datetime, boundary: datetime, tag: str) -> None:
    """A batch day as `publish` leaves it: a new file, then the manifest swapped to name it."""
    relative = f"batch/published/event_date={day.isoformat()}/hourly-{tag}.parquet"
    batch_rows = [{**r, "event_hour": datetime(day.year, day.month, day.day, r["hour"])} for r in rows]
    _write(batch_rows, data_dir / relative)
    manifest_file = data_dir / "batch" / "manifest.json"
    manifest = read_json(manifest_file) or {"days": {}}
    manifest["days"][day.isoformat()] = {"file": relative, "built_until": until.isoformat() + "+00:00"}
    manifest["boundary"] = boundary.isoformat() + "+00:00"
    replace_json(manifest_file, manifest)


def write_snapshot(data_dir: Path, partition: int, rows: list[dict]) -> None:
    _write(
        rows,
        data_dir / "speed" / "events" / "snapshots" / f"partition-{partition}.parquet",
        {"kafka_partition": partition, "next_offset": 100, "epoch": 0},
    )


def make_world(
    data_dir: Path, seed: int, boundary_hour: int | None = 10, snapshots: bool = True, today: date = TODAY
) -> Settings:
    """Six built days (the two oldest before `page_views` existed), today built until ``boundary_hour``,
    and three partitions' snapshots holding yesterday and today (rows before the boundary included, as
    the speed layer keeps a day's grace)."""
    rng = random.Random(seed)
    days = [today - timedelta(days=n) for n in range(6, 0, -1)]
    boundary = datetime(today.year, today.month, today.day, boundary_hour or 0)
    if boundary_hour is not None:
        for index, day in enumerate(days):
            names = tuple(m for m in NAMES if m != "page_views") if index < 2 else NAMES
            end = datetime(day.year, day.month, day.day) + timedelta(days=1)
            publish_day(data_dir, day, cells(rng, day, range(24), names), end, end, f"{seed}-{index}")
        if boundary_hour:  # no hour of today built: the boundary is today's midnight, the last day's end
            publish_day(
                data_dir, today, cells(rng, today, range(boundary_hour), NAMES), boundary, boundary, f"{seed}-t"
            )
    if snapshots:
        for partition in range(3):
            rows = cells(rng, days[-1], range(24), NAMES) + cells(rng, today, range(24), NAMES)
            write_snapshot(data_dir, partition, rows)
    return Settings.from_env({"LAMBDAFLOW_DATA_DIR": str(data_dir), "LAMBDAFLOW_TOPIC": "events"})
