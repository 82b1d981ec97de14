"""Serving answers: the serving dbt model's SQL, run in process over published files.

The SQL lives once, in ``dbt_project/models/serving/serving_hourly_metrics.sql``.
Here it is rendered with the current batch manifest (its files and boundary)
and the speed layer's snapshots, and run in an in-memory DuckDB: a query never
opens the warehouse or a state file, so it never waits for dbt or a worker.
"""

from __future__ import annotations

import os
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Iterator

import duckdb
import jinja2
import polars as pl

from stream_worker.boundary import boundary_of, manifest_path
from stream_worker import metrics
from stream_worker.config import Settings
from stream_worker.errors import LambdaflowError
from stream_worker.files import read_json

SERVING_SQL = Path(__file__).resolve().parents[1] / "dbt_project" / "models" / "serving" / "serving_hourly_metrics.sql"
MAX_DAYS = 3660
_COUNTRY = re.compile(r"[A-Z]{2}")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Question:
    date_from: date
    date_to: date
    hourly: bool = False
    country: str | None = None

    @classmethod
    def parse(cls, date_from: str, date_to: str, hourly: bool = False, country: str | None = None) -> Question:
        start, end = parse_date("--from", date_from), parse_date("--to", date_to)
        if end < start:
            raise LambdaflowError(f"--to {end} is before --from {start}")
        if (end - start).days >= MAX_DAYS:
            raise LambdaflowError(f"a range of {(end - start).days + 1} days is too long (at most {MAX_DAYS})")
        if country is not None and not _COUNTRY.fullmatch(country):
            raise LambdaflowError(f"--country {country!r} is not two capital letters, e.g. DE (ZZ: unknown)")
        return cls(start, end, hourly, country)


def parse_date(option: str, text: str) -> date:
    if not _ISO_DATE.fullmatch(text or ""):
        raise LambdaflowError(f"{option} {text!r} is not a date: use YYYY-MM-DD, e.g. 2026-11-26")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise LambdaflowError(f"{option} {text!r} is not a date of the calendar") from None


@dataclass(frozen=True)
class ServingInputs:
    """The published files one answer reads, taken from one reading of the manifest."""

    batch_files: list[Path]
    boundary: datetime | None
    speed_snapshots: list[Path]

    @classmethod
    def current(cls, settings: Settings) -> ServingInputs:
        manifest = read_json(manifest_path(settings.data_dir)) or {}
        return cls(
            batch_files=[settings.data_dir / entry["file"] for entry in manifest.get("days", {}).values()],
            boundary=boundary_of(manifest),
            speed_snapshots=sorted(
                (settings.data_dir / "speed" / settings.topic / "snapshots").glob("partition-*.parquet")
            ),
        )

    @contextmanager
    def pinned(self) -> Iterator[ServingInputs]:
        """The same inputs, each file opened once and read through its descriptor.

        DuckDB opens a Parquet file more than once per query (schema, then
        data). A snapshot replaced or a day republished in between would pair
        one file's footer with another's bytes; an open descriptor keeps the
        file the query started with.
        """
        with ExitStack() as stack:
            def pin(path: Path) -> Path:
                try:
                    descriptor = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    raise LambdaflowError(f"published file {path} is missing; see `lambdaflow status`") from None
                stack.callback(os.close, descriptor)
                return Path(f"/dev/fd/{descriptor}")

            yield ServingInputs(
                batch_files=[pin(path) for path in self.batch_files],
                boundary=self.boundary,
                speed_snapshots=[pin(path) for path in self.speed_snapshots],
            )

    def variables(self) -> dict[str, object]:
        """The serving model's vars, as dbt would be given them."""
        return {
            "batch_files": _sql_list(self.batch_files),
            "boundary": self.boundary.isoformat(sep=" ") if self.boundary else None,
            "speed_snapshots": _sql_list(self.speed_snapshots),
            "metrics": metrics.defined(),
        }


def render_serving_sql(variables: dict[str, object]) -> str:
    """The serving model's SQL with dbt's var() answered from ``variables``."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    template = environment.from_string(SERVING_SQL.read_text())
    return template.render(var=lambda name, default=None: variables.get(name, default), config=lambda **_: "")


def hourly_rows(inputs: ServingInputs) -> pl.DataFrame:
    """Every served hour and country, each from exactly one layer."""
    with inputs.pinned() as pinned, duckdb.connect(config={"threads": 2}) as con:
        con.execute("set TimeZone = 'UTC'").fetchall()
        return con.sql(render_serving_sql(pinned.variables())).pl()


def answer(settings: Settings, question: Question) -> list[dict]:
    """Rows per day (or per day and hour) in the range, zeros where nothing happened."""
    inputs = ServingInputs.current(settings)
    rows = hourly_rows(inputs).filter(pl.col("event_date").is_between(question.date_from, question.date_to))
    if question.country:
        rows = rows.filter(pl.col("country") == question.country)
    keys = ["event_date", "hour"] if question.hourly else ["event_date"]
    totals = {
        tuple(row[k] for k in keys): row
        for row in rows.group_by(keys).agg(_total(m) for m in metrics.names()).iter_rows(named=True)
    }
    answers = []
    day = question.date_from
    while day <= question.date_to:
        for hour in (range(24) if question.hourly else [None]):
            key = (day, hour) if question.hourly else (day,)
            found = totals.get(key)
            if question.hourly and found is None:
                continue  # hours with no events are left out
            row: dict = {"event_date": day.isoformat()}
            if question.hourly:
                row["hour"] = hour
            row.update({m: (found[m] if found else 0) for m in metrics.names()})
            row["source"] = _source(day, hour, inputs.boundary)
            answers.append(row)
        day += timedelta(days=1)
    return answers


def _total(metric: str) -> pl.Expr:
    """The sum, or null where a metric has not been built yet (added after those days were built)."""
    column = pl.col(metric)
    return pl.when(column.is_null().any()).then(None).otherwise(column.sum()).cast(pl.Int64).alias(metric)


def _source(day: date, hour: int | None, boundary: datetime | None) -> str:
    start = datetime(day.year, day.month, day.day) + timedelta(hours=hour or 0)
    end = start + (timedelta(hours=1) if hour is not None else timedelta(days=1))
    if boundary is None or boundary <= start:
        return "realtime"
    if end <= boundary:
        return "batch"
    return "mixed"


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"
