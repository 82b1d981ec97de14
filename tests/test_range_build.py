"""Range builds: `lambdaflow batch --from D1 --to D2` runs lambda_batch_range (one real dbt build on
DuckDB for all the days, a real DAG run), and publishes exactly what day-by-day builds publish."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from lambdaflow.batch.build import build_days
from lambdaflow.core.boundary import published_files
from lambdaflow.core.raw_store import RawFileDamaged, RawStore
from lambdaflow.kafka.clients import ensure_topic
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.cli_helpers import TopicWorld


class RangeWorld(TopicWorld):
    """An archived and counted topic, never built: each test builds in a copy of its data directory."""

    def __init__(self, bootstrap: str, root: Path) -> None:
        super().__init__(bootstrap, root)
        self.root = root
        # The first day has no events at all: an empty day inside the range.
        self.days = [self.today - timedelta(days=n) for n in (4, 3, 2, 1)]

    def copy(self, name: str) -> TopicWorld:
        """A world of its own over a copy of this data directory (same topic, raw store and speed state)."""
        other = TopicWorld(self.bootstrap, self.root / name)
        other.topic = self.topic
        other.env = {**self.env, "LAMBDAFLOW_DATA_DIR": str(other.data_dir)}
        other.long_lived.env = other.env
        shutil.copytree(self.data_dir, other.data_dir, symlinks=True)
        return other


@pytest.fixture(scope="module")
def world(kafka_bootstrap, tmp_path_factory) -> Iterator[RangeWorld]:
    world = RangeWorld(kafka_bootstrap, tmp_path_factory.mktemp("range"))
    ensure_topic(kafka_bootstrap, world.topic, 3)
    options = generator.Options(
        days=3,
        events_per_day=3_000,
        seed=18,
        until=datetime.combine(world.today, datetime.min.time(), UTC) + timedelta(hours=1),
        duplicates=0.05,
        out_of_order=0.05,
        late=0.01,
        malformed=0.01,
    )
    produce(kafka_bootstrap, world.topic, 3, options)
    for command in (("archive", "--until-idle"), ("stream", "--until-idle")):
        done = world.lambdaflow(*command)
        assert done.exit_code == 0, done.stderr[-3000:]
    try:
        yield world
    finally:
        world.close()


def published_rows(world: TopicWorld, manifest: dict, day: date) -> list[tuple]:
    files = published_files(manifest["days"][day.isoformat()], world.data_dir)
    if not files:  # a day without events
        return []
    return duckdb.execute("select * from read_parquet(?) order by event_hour, country", [files]).fetchall()


def build_record(world: TopicWorld, day: date) -> dict:
    record = json.loads((world.data_dir / "batch" / "builds" / f"{day.isoformat()}.json").read_text())
    return {key: value for key, value in record.items() if key != "built_at"}


@pytest.mark.slow
def test_a_range_build_publishes_exactly_what_day_by_day_builds_publish(world) -> None:
    ranged, daily = world.copy("ranged"), world.copy("daily")
    try:
        done = ranged.batch("--from", world.days[0].isoformat(), "--to", world.days[-1].isoformat())
        assert done.exit_code == 0, done.stderr[-3000:]
        range_manifest = json.loads(done.stdout)
        for day in world.days:
            built = daily.batch("--date", day.isoformat())
            assert built.exit_code == 0, built.stderr[-3000:]
        daily_manifest = json.loads(built.stdout)
    finally:
        ranged.close()
        daily.close()

    midnight = datetime.combine(world.today, datetime.min.time(), UTC)
    assert range_manifest["boundary"] == daily_manifest["boundary"] == midnight.isoformat()
    assert sorted(range_manifest["days"]) == sorted(daily_manifest["days"]) == [d.isoformat() for d in world.days]
    events = 0
    for day in world.days:
        entry, expected = range_manifest["days"][day.isoformat()], daily_manifest["days"][day.isoformat()]
        assert (entry["built_until"], entry["covered"]) == (expected["built_until"], expected["covered"])
        rows = published_rows(ranged, range_manifest, day)
        assert rows == published_rows(daily, daily_manifest, day), day
        assert build_record(ranged, day) == build_record(daily, day), day
        reconciled = json.loads((ranged.data_dir / "batch" / "reconcile" / f"{day.isoformat()}.json").read_text())
        assert all(row["unexplained"] == 0 for row in reconciled), day
        events += sum(row[4] for row in rows)  # events, the first metric column
    assert published_rows(ranged, range_manifest, world.days[0]) == []  # the empty day, published empty
    assert events > 8_000


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (("--from", "{d2}", "--to", "{d1}"), 1, "--from {d2} is after --to {d1}"),
        (("--from", "2026-02-30", "--to", "{d1}"), 1, "--from '2026-02-30' is not a date of the calendar"),
        (("--from", "yesterday", "--to", "{d1}"), 1, "--from 'yesterday' is not a date: use YYYY-MM-DD"),
        (("--from", "{d1}", "--to", "{tomorrow}"), 1, "--to {tomorrow} is in the future"),
        (("--from", "{d1}", "--to", "{today}"), 1, "day {today} is not complete yet"),
        (("--from", "2020-01-01", "--to", "{d1}"), 1, "spans more than 366 days"),
        (("--from", "{d1}"), 2, "give exactly one of --date D, --from D1 --to D2"),
        (("--from", "{d1}", "--to", "{d1}", "--date", "{d1}"), 2, "give exactly one of"),
        (("--from", "{d1}", "--to", "{d1}", "--today"), 2, "give exactly one of"),
        (("--to", "{d1}", "--late"), 2, "give exactly one of"),
    ],
)
def test_bad_range_input_fails_with_one_line_and_writes_nothing(world, args, exit_code: int, message: str) -> None:
    days = {
        "d1": world.days[1].isoformat(),
        "d2": world.days[2].isoformat(),
        "today": world.today.isoformat(),
        "tomorrow": (world.today + timedelta(days=1)).isoformat(),
    }
    result = world.lambdaflow("batch", *(arg.format(**days) for arg in args), timeout=120)
    assert result.exit_code == exit_code, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert message.format(**days) in lines[-1]
    assert "Traceback" not in result.stderr
    # Refused before anything was written: no build, no publish, not even Airflow's database.
    assert not (world.data_dir / "batch").exists()
    assert not (world.data_dir / "warehouse").exists()
    assert not world.settings().layout.airflow_home.exists()


def test_a_damaged_raw_file_on_the_last_day_fails_the_range_before_any_day_is_written(world) -> None:
    damaged = world.copy("damaged")
    last = world.days[-1]
    victim = Path(RawStore(damaged.data_dir, damaged.topic).files_for_date(last)[0])
    victim.write_bytes(victim.read_bytes()[:-100])  # a torn file: its Parquet footer is gone

    with pytest.raises(RawFileDamaged, match=victim.name):
        build_days(damaged.settings(), world.days[0], last)  # what the DAG's build task runs
    result = damaged.lambdaflow("batch", "--from", world.days[0].isoformat(), "--to", last.isoformat())
    assert result.exit_code == 1
    assert victim.name in result.stderr.strip().splitlines()[-1]
    for written in ("batch", "warehouse", "airflow"):
        assert not (damaged.data_dir / written).exists(), written
