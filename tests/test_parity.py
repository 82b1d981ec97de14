"""Both layers compute the same metrics from the same events, hour by hour.

Seeded random cases (duplicates, disorder, events around UTC midnight, odd
UTC offsets, several users per case) go through the contract once; then the
valid events run through the batch layer's dbt models (one real `dbt build`
on DuckDB for all cases: case N lives on its own days) and through the speed
layer's per-partition state in random micro-batches. Every hour, country and
metric must agree.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import zlib
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from lambdaflow.core import metrics as metric_definitions
from lambdaflow.core.contract import RECORD_SCHEMA, classify
from lambdaflow.core.metrics import Metric
from stream_worker.state import PartitionState

DBT_PROJECT = Path(__file__).resolve().parents[1] / "dbt_project"
CASES = 200
DAYS_PER_CASE = 3
FIRST_DAY = date(2024, 1, 1)
PARTITIONS = 3
OFFSETS = ("Z", "+00:00", "+05:30", "+05:45", "-09:30", "+14:00", "-12:00", "+01:00")
COUNTRIES = ("DE", "US", "IN", "NP", None)


def case_messages(case: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """(key, value) pairs of one case in send order, on the case's own days."""
    midnight = datetime.combine(FIRST_DAY + timedelta(days=DAYS_PER_CASE * case + 1), datetime.min.time(), UTC)
    users = [f"c{case}-u{n}" for n in range(rng.randint(1, 5))]
    home = {user: rng.choice(COUNTRIES) for user in users}
    messages = []
    for n in range(rng.randint(1, 40)):
        user = rng.choice(users)
        at = midnight + timedelta(seconds=rng.randint(-6 * 3600, 6 * 3600))
        if rng.random() < 0.2:  # several events in one second: ties broken by offset
            at = midnight
        offset = rng.choice(OFFSETS)
        local = at.astimezone(_zone(offset))
        stamp = local.isoformat().replace("+00:00", "Z") if offset == "Z" else local.isoformat()
        reused = n and rng.random() < 0.05  # an id sent again with another user or time: another event
        event = {
            "event_id": f"c{case}-e{rng.randrange(n) if reused else n}",
            "event_type": rng.choice(("signup", "login", "page_view", "order")),
            "user_id": user,
            "occurred_at": stamp,
        }
        country = home[user] if rng.random() < 0.9 else rng.choice(COUNTRIES)
        if country is not None:
            event["country"] = country
        if event["event_type"] == "order":
            event["amount_cents"] = rng.randint(0, 50_000)
        messages.append((user, json.dumps(event).encode()))
    for message in rng.sample(messages, k=len(messages) // 5):  # resent copies, later
        messages.insert(rng.randint(messages.index(message) + 1, len(messages)), message)
    for _ in range(len(messages) // 4):  # disorder
        i, j = rng.randrange(len(messages)), rng.randrange(len(messages))
        messages[i], messages[j] = messages[j], messages[i]
    return messages


def _zone(offset: str) -> timezone:
    if offset == "Z":
        return UTC
    sign = 1 if offset[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))


def valid_events(seed: int) -> pl.DataFrame:
    """All cases' messages through the contract, as the archiver and the worker see them."""
    rng = random.Random(seed)
    next_offset = [0] * PARTITIONS
    rows = []
    for case in range(CASES):
        for key, value in case_messages(case, rng):
            partition = zlib.crc32(key.encode()) % PARTITIONS  # a user's events share a partition
            rows.append(
                ("events", partition, next_offset[partition], datetime(2030, 1, 1, tzinfo=UTC), key.encode(), value)
            )
            next_offset[partition] += 1
    decoded = classify(pl.DataFrame(rows, schema=RECORD_SCHEMA, orient="row"))
    assert decoded.rejects.height == 0, decoded.rejects.head()
    return decoded.events


def write_raw_store(events: pl.DataFrame, work: Path) -> list[Path]:
    """The events as the archiver lays them out: raw/events/event_date=D/*.parquet."""
    raw = work / "raw"
    for (day,), frame in events.partition_by("event_date", as_dict=True).items():
        folder = raw / f"event_date={day.isoformat()}"
        folder.mkdir(parents=True)
        frame.drop("event_date").write_parquet(folder / "events.parquet")
    (work / "data" / "warehouse").mkdir(parents=True)
    return sorted(raw.rglob("*.parquet"))


def dbt_build(
    project: Path, work: Path, raw_files: list[Path], first: date, last: date, full_refresh: bool = False
) -> None:
    variables = {
        "ds": first.isoformat(),
        "ds_end": last.isoformat(),
        "raw_files": json.dumps([str(p) for p in raw_files]).replace('"', "'"),
    }
    build = subprocess.run(
        [
            str(Path(sys.executable).parent / "dbt"),
            "build",
            "--select",
            "+fct_hourly_metrics",
            *(["--full-refresh"] if full_refresh else []),
            "--vars",
            json.dumps(variables),
            "--project-dir",
            str(project),
            "--profiles-dir",
            str(project),
            "--target-path",
            str(work / "target"),
            "--log-path",
            str(work / "logs"),
        ],
        env={**os.environ, "LAMBDAFLOW_DATA_DIR": str(work / "data"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-4000:]


def warehouse_hours(work: Path) -> dict:
    with duckdb.connect(str(work / "data" / "warehouse" / "lambdaflow.duckdb"), read_only=True) as con:
        return by_cell(con.sql("select * from fct_hourly_metrics").pl())


def batch_layer(events: pl.DataFrame, project: Path, work: Path) -> dict:
    """One `dbt build` of fct_hourly_metrics over every case's days."""
    days = sorted(events["event_date"].unique())
    dbt_build(project, work, write_raw_store(events, work), days[0], days[-1], full_refresh=True)
    return warehouse_hours(work)


def speed_layer(events: pl.DataFrame, metrics: tuple[Metric, ...], work: Path, rng: random.Random) -> dict:
    """Each partition's events through its speed state, in random micro-batches."""
    snapshots = []
    for (partition,), frame in events.sort("kafka_offset").partition_by("kafka_partition", as_dict=True).items():
        state = PartitionState(work / f"state-{partition}.duckdb", partition, metrics)
        end_of_log = frame["kafka_offset"].max() + 1
        start = 0
        while start < end_of_log:
            end = min(end_of_log, start + rng.randint(1, 60))
            batch = frame.filter(pl.col("kafka_offset").is_between(start, end - 1))
            state.apply(batch, start, end, {"offset": end - 1})
            start = end
        snapshots.append(state.snapshot())
        state.close()
    names = [m.name for m in metrics]
    summed = pl.concat(snapshots).group_by("event_date", "hour", "country").agg(pl.col(names).sum())
    return by_cell(summed)


def by_cell(frame: pl.DataFrame) -> dict:
    """{(event_date, hour, country): {metric: value}}, every metric column of the frame."""
    keys = {"event_date", "hour", "country", "event_hour", "kafka_partition", "next_offset", "epoch"}
    names = [c for c in frame.columns if c not in keys]
    return {
        (row["event_date"], row["hour"], row["country"]): {m: row[m] for m in names}
        for row in frame.iter_rows(named=True)
    }


def differences(batch: dict, speed: dict) -> list[str]:
    lines = []
    for cell in sorted(set(batch) | set(speed)):
        if batch.get(cell) != speed.get(cell):
            case = (cell[0] - FIRST_DAY).days // DAYS_PER_CASE
            lines.append(f"case {case}, {cell}: batch {batch.get(cell)} speed {speed.get(cell)}")
    return lines


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return valid_events(seed=20261127)


def test_200_random_cases_agree_hour_by_hour(events, tmp_path) -> None:
    batch = batch_layer(events, DBT_PROJECT, tmp_path / "batch")
    speed = speed_layer(events, metric_definitions.defined(), tmp_path / "speed", random.Random(7))
    assert len(batch) > CASES  # every case has hours; most have several
    assert differences(batch, speed) == []
    assert set(next(iter(batch.values()))) == set(metric_definitions.names())


def project_with_more_metrics(tmp_path: Path) -> Path:
    """A copy of the dbt project whose definition has two more metrics, a count and a users one."""
    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    definition = yaml.safe_load((project / "dbt_project.yml").read_text())
    definition["vars"]["metrics"] += [
        {"name": "logins", "aggregation": "count", "event_types": ["login"], "description": "Login events."},
        {
            "name": "buyers",
            "aggregation": "users",
            "event_types": ["order"],
            "description": "Users whose first order of the UTC day falls in this hour and country.",
        },
    ]
    (project / "dbt_project.yml").write_text(yaml.safe_dump(definition, sort_keys=False))
    return project


def test_a_metric_added_to_the_definition_reaches_both_layers(events, tmp_path) -> None:
    project = project_with_more_metrics(tmp_path)
    metrics = metric_definitions.load(project / "dbt_project.yml")

    batch = batch_layer(events, project, tmp_path / "batch")
    speed = speed_layer(events, metrics, tmp_path / "speed", random.Random(8))
    assert differences(batch, speed) == []
    expected = expected_logins_and_buyers(events)
    assert {cell: {"logins": v["logins"], "buyers": v["buyers"]} for cell, v in batch.items()} == expected


def expected_logins_and_buyers(events: pl.DataFrame) -> dict:
    """The two new metrics, the obvious way: first copies, then first order per user-day."""
    table: dict = defaultdict(lambda: {"logins": 0, "buyers": 0})
    seen, first_order = set(), {}
    for row in events.sort("kafka_partition", "kafka_offset").iter_rows(named=True):
        at = row["occurred_at"]
        identity = (row["event_id"], row["kafka_partition"], at.date(), at.hour)  # an event's copies share all four
        if identity in seen:
            continue
        seen.add(identity)
        cell = (at.date(), at.hour, row["country"])
        table[cell]["logins"] += row["event_type"] == "login"
        if row["event_type"] == "order":
            user_day = (at.date(), row["user_id"])
            if user_day not in first_order or (at, row["kafka_offset"]) < first_order[user_day][0]:
                first_order[user_day] = ((at, row["kafka_offset"]), cell)
    for _, cell in first_order.values():
        table[cell]["buyers"] += 1
    return dict(table)


@pytest.mark.slow  # two builds of a copy of the project and a backfill: half a minute
def test_a_metric_added_later_is_null_on_older_days_until_a_backfill_rebuilds_them(events, tmp_path) -> None:
    work = tmp_path / "warehouse"
    raw_files = write_raw_store(events, work)
    older, newer = FIRST_DAY, FIRST_DAY + timedelta(days=DAYS_PER_CASE)
    dbt_build(DBT_PROJECT, work, raw_files, older, older)
    extended = project_with_more_metrics(tmp_path)
    dbt_build(extended, work, raw_files, newer, newer)  # the running warehouse gains the columns
    expected = expected_logins_and_buyers(events)
    assert {cell[0] for cell in expected} >= {older, newer}  # both days have events
    hours = warehouse_hours(work)
    assert {cell: v["logins"] for cell, v in hours.items() if cell[0] == older} == {
        cell: None for cell in expected if cell[0] == older
    }
    assert {cell: v["logins"] for cell, v in hours.items() if cell[0] == newer} == {
        cell: v["logins"] for cell, v in expected.items() if cell[0] == newer
    }
    dbt_build(extended, work, raw_files, older, older)  # the backfill of the older day
    assert {
        cell: {"logins": v["logins"], "buyers": v["buyers"]}
        for cell, v in warehouse_hours(work).items()
        if cell[0] in (older, newer)
    } == {cell: v for cell, v in expected.items() if cell[0] in (older, newer)}
