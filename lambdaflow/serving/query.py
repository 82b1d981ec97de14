"""Serving answers: the serving dbt model's SQL, run in process over published files.

The SQL lives once, in ``dbt_project/models/serving/serving_hourly_metrics.sql``.
Here it is rendered with the current batch manifest (its files and boundary)
and the speed layer's snapshots, and run in an in-memory DuckDB: a query never
opens the warehouse or a state file, so it never waits for dbt or a worker.

An answer costs about as much as reading its files: the rendered SQL is kept
per template text, metrics and boundary (the file lists are bound as query
parameters), the process keeps one DuckDB and takes a cursor per answer, only
the files that can hold the asked days are read, and the range's totals are
summed in the same statement.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import jinja2

from lambdaflow.core import metrics
from lambdaflow.core.boundary import BatchHours, boundary_of, published_files, read_manifest, start_of
from lambdaflow.core.config import Settings
from lambdaflow.core.days import parse_query_day, today
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.project import SERVING_SQL
from lambdaflow.core.storage import Storage

if TYPE_CHECKING:
    import polars as pl

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


DEFAULT_DAYS = 7
"""A question without a range asks about the last seven UTC days, today included."""


def ask(
    date_from: str | None = None, date_to: str | None = None, hourly: bool = False, country: str | None = None
) -> Question:
    """A question as a user gives it (`lambdaflow query`'s options, `/api/query`'s parameters):
    without ``--to``, up to today (UTC); without ``--from``, the :data:`DEFAULT_DAYS` days up to ``--to``.
    Bad input raises :class:`LambdaflowError` with the one line both doors show."""
    first = parse_query_day(date_from, "--from") if date_from is not None else None
    last = parse_query_day(date_to, "--to") if date_to is not None else today()
    if first is None:
        first = last - timedelta(days=DEFAULT_DAYS - 1)
    return Question.parse(first.isoformat(), last.isoformat(), hourly, country)


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

    batch_files: list[str]
    """Paths, or URIs of the storage's files (``s3://...``)."""
    boundary: datetime | None
    speed_snapshots: list[str]
    batch_dates: list[date] | None = None
    """The event date of each batch file (the manifest's key for it); None: not known, keep every file."""
    served_until: dict[date, datetime] = field(default_factory=dict)
    """Per built day that the batch serves, the end of its batch-served hours (see BatchHours)."""
    storage: Storage | None = None
    """Where the published table lives: DuckDB reads an S3 one's files through its filesystem."""

    @classmethod
    def current(cls, settings: Settings) -> ServingInputs:
        manifest = read_manifest(settings.documents)
        named = [
            (uri, date.fromisoformat(key))
            for key, entry in manifest.get("days", {}).items()
            for uri in published_files(entry, settings.data_dir)
        ]
        return cls(
            batch_files=[uri for uri, _ in named],
            boundary=boundary_of(manifest),
            speed_snapshots=settings.speed_files.snapshots(),
            batch_dates=[day for _, day in named],
            served_until=BatchHours.of(manifest).served_until,
            storage=settings.storage,
        )

    def within(self, start: date, end: date) -> ServingInputs:
        """Only the files that can serve an hour of the days ``start`` to ``end``; the boundary stays as read.

        A published day's file holds that day's hours only, so other days' files go, and so does a day
        of which the batch serves no hour. A snapshot holds every day the speed layer keeps, so the
        snapshots stay unless the batch serves every hour of the range. Leaving out a file drops only
        rows that the model's filters or the range would drop anyway: the answer is the same, from
        fewer files.
        """
        if self.batch_dates is None:
            return self
        kept = [
            (path, day)
            for path, day in zip(self.batch_files, self.batch_dates, strict=False)
            if start <= day <= end and day in self.served_until
        ]
        speed_serves = any(
            self._until(start + timedelta(days=n)) < start_of(start + timedelta(days=n + 1))
            for n in range((end - start).days + 1)
        )
        return replace(
            self,
            batch_files=[path for path, _ in kept],
            batch_dates=[day for _, day in kept],
            served_until={day: self.served_until[day] for _, day in kept},
            speed_snapshots=self.speed_snapshots if speed_serves else [],
        )

    def _until(self, day: date) -> datetime:
        return self.served_until.get(day, start_of(day))

    @contextmanager
    def pinned(self) -> Iterator[ServingInputs]:
        """The same inputs, each file opened once and read through its descriptor.

        DuckDB opens a Parquet file more than once per query (schema, then
        data). A snapshot replaced or a day republished in between would pair
        one file's footer with another's bytes; an open descriptor keeps the
        file the query started with. A published batch file on an object store
        is never replaced, and removed only by a vacuum after the kept period:
        it needs no pin. A snapshot there is replaced by a PUT: it is fetched
        whole, by one GET, into a local file the query reads.
        """
        with ExitStack() as stack:

            def fetch(uri: str) -> str:
                assert self.storage is not None
                copy = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".parquet"))
                with self.storage.open(uri) as whole:
                    shutil.copyfileobj(whole, copy)
                copy.flush()
                return copy.name

            def pin(path: Path | str) -> str:
                if "://" in str(path):
                    return str(path)
                try:
                    descriptor = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    raise LambdaflowError(f"published file {path} is missing; see `lambdaflow status`") from None
                stack.callback(os.close, descriptor)
                return f"/dev/fd/{descriptor}"

            yield replace(
                self,
                batch_files=[pin(path) for path in self.batch_files],
                speed_snapshots=[fetch(uri) if "://" in uri else pin(uri) for uri in self.speed_snapshots],
            )

    def variables(self) -> dict[str, object]:
        """The serving model's vars, as dbt would be given them."""
        return {
            "batch_files": _sql_list(self.batch_files),
            "boundary": self.boundary.isoformat(sep=" ") if self.boundary else None,
            "speed_snapshots": _sql_list(self.speed_snapshots),
            "batch_days": "[" + ", ".join(f"'{day.isoformat()}'" for day in sorted(self.served_until)) + "]",
            "batch_until": "["
            + ", ".join(f"'{self.served_until[day].isoformat(sep=' ')}'" for day in sorted(self.served_until))
            + "]",
            "metrics": metrics.defined(),
        }

    def statement(self) -> tuple[str, dict[str, list]]:
        """The serving model's SQL with the file lists and the batch-served days as the parameters
        ``$batch_files``, ``$speed_snapshots``, ``$batch_days`` and ``$batch_until``, and the values
        to bind to them.

        The rendered SQL then depends only on the template, the metrics, the boundary and which
        lists are empty, so it is rendered once per such combination (see :func:`rendered_statement`), not
        once per answer, while each answer still reads the files it pinned.
        """
        values: dict[str, list] = {
            name: [str(p) for p in paths]
            for name, paths in (("batch_files", self.batch_files), ("speed_snapshots", self.speed_snapshots))
            if paths
        }
        if self.served_until:
            values["batch_days"] = sorted(self.served_until)
            values["batch_until"] = [self.served_until[day] for day in values["batch_days"]]
        sql = rendered_statement(
            SERVING_SQL.read_text(),
            metrics.defined(),
            self.boundary.isoformat(sep=" ") if self.boundary else None,
            "batch_files" in values,
            "speed_snapshots" in values,
            "batch_days" in values,
        )
        return sql, values


def render_serving_sql(variables: dict[str, object]) -> str:
    """The serving model's SQL with dbt's var() answered from ``variables``."""
    template = compiled_template(SERVING_SQL.read_text())
    return template.render(
        var=lambda name, default=None: variables.get(name, default),
        config=lambda **_: "",
        source=lambda *_: "",  # named in a comment, for dbt's lineage only
    )


@functools.lru_cache(maxsize=4)
def compiled_template(source: str) -> jinja2.Template:
    """The compiled template, once per text of the model (compiling costs tens of milliseconds)."""
    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(source)


@functools.lru_cache(maxsize=64)
def rendered_statement(
    source: str,
    defined: tuple[metrics.Metric, ...],
    boundary: str | None,
    has_batch: bool,
    has_speed: bool,
    has_served: bool,
) -> str:
    """The model rendered with parameters for its lists; keyed on everything the text depends on."""
    return render_serving_sql(
        {
            "batch_files": "$batch_files" if has_batch else "[]",
            "boundary": boundary,
            "speed_snapshots": "$speed_snapshots" if has_speed else "[]",
            "batch_days": "$batch_days" if has_served else "[]",
            "batch_until": "$batch_until" if has_served else "[]",
            "metrics": defined,
        }
    )


# One in-memory DuckDB per process, a cursor (a connection of its own) per answer, so threads
# may answer at once. It holds no table: every answer reads only the files it pinned. The file
# caches are off because a pinned path (/dev/fd/N) names another file in the next answer. One
# thread: an answer is a few small files and a plan, which a second thread only slows (a hand-off
# that waits for a core when the layers keep both busy); each answering thread runs its own query.
_DUCKDB_SETTINGS = {
    "threads": "1",
    "TimeZone": "'UTC'",
    "enable_external_file_cache": "false",
    "parquet_metadata_cache": "false",
}
_database_lock = threading.Lock()
_database: duckdb.DuckDBPyConnection | None = None
_forked_away: list[duckdb.DuckDBPyConnection] = []
_filesystems: set[str] = set()


def _cursor(storage: Storage | None = None) -> duckdb.DuckDBPyConnection:
    """A cursor of the process's database, which reads ``storage``'s files (an S3 one's through its
    fsspec filesystem, registered once)."""
    global _database
    with _database_lock:
        if _database is None:
            database = duckdb.connect()
            for name, value in _DUCKDB_SETTINGS.items():  # global: every cursor's session starts from them
                database.execute(f"set global {name} = {value}")
            _database = database
        if storage is not None and storage.is_s3 and storage.url not in _filesystems:
            _database.register_filesystem(storage.filesystem())
            _filesystems.add(storage.url)
        return _database.cursor()


def _forget_the_database_in_a_child() -> None:
    """A forked child opens a database of its own; the parent's is never used, nor closed, there."""
    global _database, _database_lock
    if _database is not None:
        _forked_away.append(_database)
    _database, _database_lock = None, threading.Lock()
    _filesystems.clear()
    _totals_statement.cache_clear()  # parsed by the parent's database


os.register_at_fork(after_in_child=_forget_the_database_in_a_child)


def hourly_rows(inputs: ServingInputs) -> pl.DataFrame:
    """Every served hour and country, each from exactly one layer."""
    with inputs.pinned() as pinned, _cursor(inputs.storage) as cursor:
        sql, values = pinned.statement()
        return cursor.sql(sql, params=values).pl()


def answer(settings: Settings, question: Question) -> list[dict]:
    """Rows per day (or per day and hour) in the range, zeros where nothing happened."""
    inputs = ServingInputs.current(settings).within(question.date_from, question.date_to)
    keys = ("event_date", "hour") if question.hourly else ("event_date",)
    with inputs.pinned() as pinned, _cursor(inputs.storage) as cursor:
        served, values = pinned.statement()
        bound: dict[str, object] = {**values, "date_from": question.date_from, "date_to": question.date_to}
        if question.country:
            bound["country"] = question.country
        found = cursor.execute(_totals_statement(served, keys, bool(question.country)), bound).fetchall()
    width = len(keys)
    totals = {row[:width]: dict(zip(metrics.names(), row[width:], strict=False)) for row in found}
    answers = []
    day = question.date_from
    while day <= question.date_to:
        for hour in range(24) if question.hourly else [None]:
            key = (day, hour) if question.hourly else (day,)
            sums = totals.get(key)
            if question.hourly and sums is None:
                continue  # hours with no events are left out
            row: dict = {"event_date": day.isoformat()}
            if question.hourly:
                row["hour"] = hour
            row.update({m: (sums[m] if sums else 0) for m in metrics.names()})
            row["source"] = source_of(day, hour, inputs.served_until.get(day))
            answers.append(row)
        day += timedelta(days=1)
    return answers


@functools.lru_cache(maxsize=64)
def _totals_statement(served: str, keys: tuple[str, ...], by_country: bool) -> duckdb.Statement:
    """The range's totals per key over the served rows, in one statement, parsed once: DuckDB's parser
    takes milliseconds over the serving model, and executing a parsed statement runs a copy of it."""
    with _cursor() as cursor:
        (statement,) = cursor.extract_statements(_totals_sql(served, keys, by_country))
    return statement


def _totals_sql(served: str, keys: tuple[str, ...], by_country: bool) -> str:
    group = ", ".join(keys)
    where = "event_date between $date_from and $date_to" + (" and country = $country" if by_country else "")
    return (
        f"select {group}, {', '.join(_total(m) for m in metrics.names())}\n"
        f"from (\n{served}\n) as served\nwhere {where}\ngroup by {group}"
    )


def _total(metric: str) -> str:
    """The sum, or null where a metric has not been built yet (added after those days were built)."""
    return f"cast(case when bool_or({metric} is null) then null else sum({metric}) end as bigint) as {metric}"


def source_of(day: date, hour: int | None, served_until: datetime | None) -> str:
    """Which layer serves the hour (or the day, when ``hour`` is None), given the end of the day's
    batch-served hours (None: the batch serves none of them)."""
    start = start_of(day) + timedelta(hours=hour or 0)
    end = start + (timedelta(hours=1) if hour is not None else timedelta(days=1))
    if served_until is None or served_until <= start:
        return "realtime"
    if end <= served_until:
        return "batch"
    return "mixed"


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"
