"""The batch layer's build of one UTC day, or of a range of whole days in one dbt run, called by the
DAGs and by `lambdaflow batch`.

dbt builds the day over only its covered raw files (:func:`build_day`; a range:
:func:`build_days`, over the covered files of its days), then
:mod:`lambdaflow.batch.publish` publishes each day. Only dbt writes the warehouse,
and only under the warehouse lock: the Airflow pool serialises scheduled runs,
the lock also covers in-process runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from lambdaflow.batch.completeness import DAY, require_complete_hours
from lambdaflow.batch.dbt import as_vars, run_dbt, sql_string
from lambdaflow.batch.publish import publish, publish_days
from lambdaflow.core import days, late, metrics
from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.contract import EVENT_SCHEMA
from lambdaflow.core.days import midnight
from lambdaflow.core.errors import InputError
from lambdaflow.core.layout import build_record_name
from lambdaflow.core.raw_store import RawStore, read_ends
from lambdaflow.core.raw_tables import FileRange, RawSnapshot
from lambdaflow.core.storage import file_name
from lambdaflow.core.warehouse import warehouse_lock

log = logging.getLogger(__name__)


def parse_day(text: object, *, latest: date | None = None, what: str | None = None) -> date:
    """A UTC day as YYYY-MM-DD; anything else is a clear error (an InputError)."""
    return days.parse_day(text, what, latest=latest)


MANUAL_RUN_TYPES = ("manual",)
"""Only a run triggered by hand builds its `ds`; a scheduled or backfill run builds its data interval."""


def run_day(params: dict | None, data_interval_start: datetime | None, dag_run: object = None) -> date:
    """The day a lambda_batch run builds: its `ds` param when triggered by hand, else its data interval.
    A backfill's form offers `ds` too; a backfill run ignores it, or every run of the range would
    build that one day."""
    chosen = (params or {}).get("ds")
    run_type = getattr(dag_run, "run_type", None) or "manual"
    run_type = str(getattr(run_type, "value", run_type))
    if chosen is not None and run_type not in MANUAL_RUN_TYPES:
        log.info("ds %s ignored: a %s run builds its data interval", chosen, run_type)
    elif chosen is not None:
        return parse_day(chosen, latest=datetime.now(UTC).date(), what="ds")
    if data_interval_start is None:
        raise InputError("a run without a data interval needs the day in its ds param (YYYY-MM-DD)")
    return data_interval_start.date()


MOST_DAYS = 366
"""The longest range one run builds: a backfill of years is several runs, and a typo such as
1970-01-01 is refused instead of building fifty years of empty days."""


def parse_range(first: object, last: object, *, latest: date, what: tuple[str, str] = ("--from", "--to")) -> list[date]:
    """The whole UTC days ``first`` to ``last`` (inclusive), oldest first; bad input is an InputError."""
    start, end = parse_day(first, latest=latest, what=what[0]), parse_day(last, latest=latest, what=what[1])
    if start > end:
        raise InputError(f"{what[0]} {start} is after {what[1]} {end}: give the first day, then the last")
    if (end - start).days + 1 > MOST_DAYS:
        raise InputError(f"{what[0]} {start} to {what[1]} {end} spans more than {MOST_DAYS} days: build it in parts")
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def run_days(params: dict | None) -> list[date]:
    """The days a lambda_batch_range run builds: its `from` and `to` params."""
    params = params or {}
    return parse_range(params.get("from"), params.get("to"), latest=datetime.now(UTC).date(), what=("from", "to"))


@contextmanager
def failing_at_once() -> Iterator[None]:
    """Bad input (a day, the metrics definition, a damaged raw file) fails the task without retries:
    a retry would read the same input. The task log then ends with the one line that says why."""
    try:
        yield
    except InputError as error:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(error)) from None


@dataclass(frozen=True)
class DayInputs:
    """What a build of one day reads, from one snapshot of the raw tables."""

    ranges: list[FileRange]
    digests: dict[str, str]

    @property
    def files(self) -> list[str]:
        """The URIs of the day's raw files."""
        return [each.uri for each in self.ranges]


def check_inputs(settings: Settings, day: date, snapshot: RawSnapshot | None = None) -> DayInputs:
    """Refuse bad input before anything is written: the metrics definition, the batch manifest the
    build will extend, and the day's raw files (each a whole Parquet file; none that the day's last
    build read missing or changed).

    Returns the day's raw files, with the offsets each holds, and their SHA-256 by name. Writes nothing.
    """
    metrics.defined()
    read_manifest(settings.documents)
    snapshot = snapshot or raw_store(settings).snapshot()
    ranges = snapshot.file_ranges([day]).get(day, [])
    return DayInputs(ranges, late.require_as_built(settings, day, ranges))


def raw_store(settings: Settings) -> RawStore:
    return RawStore(settings.data_dir, settings.topic, settings.storage)


def raw_files_for(settings: Settings, day: date, files: list[str]) -> list[str]:
    """The day's raw files; an empty day reads one empty local file."""
    if files:
        return files
    empty = settings.layout.empty_raw_file(day)
    if not empty.exists():
        empty.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(schema=EVENT_SCHEMA).drop("event_date").write_parquet(empty)
    return [str(empty)]


def build_day(settings: Settings, day: date, until: datetime | None = None) -> dict:
    """dbt build for one UTC day (all of it, or the hours before ``until``), then publish it."""
    until = midnight(day) + DAY if until is None else until
    snapshot = raw_store(settings).snapshot()
    inputs = check_inputs(settings, day, snapshot)
    files = raw_files_for(settings, day, inputs.files)
    variables = {
        "ds": day.isoformat(),
        "until": None if until >= midnight(day) + DAY else until.isoformat(),
        "raw_files": "[" + ", ".join(sql_string(f) for f in files) + "]",
    }
    with warehouse_lock(settings):
        log.info("dbt build for %s (until %s) over %d raw files", day, until.isoformat(), len(files))
        run_dbt(settings, "build", "--vars", as_vars(variables))
        covered = read_ends(inputs.ranges, snapshot)
        published = publish(settings, day, until, variables, covered)
        record_build(settings, day, inputs, covered)
    return published


def build_days(settings: Settings, first: date, last: date) -> dict:
    """One dbt build for the whole days ``first`` to ``last``, then each day published (and its build
    recorded) exactly as :func:`build_day` would, oldest first: the same files, the same manifest.
    Every day's inputs are checked before anything is written."""
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    snapshot = raw_store(settings).snapshot()
    inputs = {day: check_inputs(settings, day, snapshot) for day in days}
    files = [uri for day in days for uri in inputs[day].files] or raw_files_for(settings, first, [])
    variables = {
        "ds": first.isoformat(),
        "ds_end": last.isoformat(),
        "until": None,
        "raw_files": "[" + ", ".join(sql_string(f) for f in files) + "]",
    }
    covered = {day: read_ends(inputs[day].ranges, snapshot) for day in days}
    with warehouse_lock(settings):
        log.info("dbt build for %s to %s (%d days) over %d raw files", first, last, len(days), len(files))
        run_dbt(settings, "build", "--vars", as_vars(variables))
        return publish_days(
            settings,
            {day: midnight(day) + DAY for day in days},
            variables,
            covered,
            on_published=lambda day: record_build(settings, day, inputs[day], covered[day]),
        )


def record_build(settings: Settings, day: date, inputs: DayInputs, covered: dict[str, dict]) -> None:
    """What the day's last build read: its raw files with their SHA-256, how many rows they held and
    how far in each partition (``covered``, as published), so that the next build or reconciliation
    notices a file that changed, or rows that went missing, since."""
    document: dict[str, object] = {
        "event_date": day.isoformat(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "raw_files": sorted(file_name(uri) for uri in inputs.files),
        "raw_file_sha256": dict(sorted(inputs.digests.items())),
        "rows": sum(each.rows for each in inputs.ranges),
        "covered": covered,
    }
    settings.documents.write(build_record_name(day), document)


# late data (invariant 8)


def rebuild_late_days(settings: Settings) -> list[str]:
    """Rebuild every whole built day that has late raw files, so the served answer includes them."""
    rebuilt = []
    for day, count in late.late_days(settings).items():
        log.info("%s has %d raw file(s) with events archived after its build: rebuilding it", day, count)
        build_day(settings, day)
        rebuilt.append(day.isoformat())
    if not rebuilt:
        log.info("no built day has late raw files")
    return rebuilt


def build_today(settings: Settings, ds: object = None, now: datetime | None = None) -> dict:
    """The manual run: the complete hours of ``ds`` (None: today), boundary moved to the last of them."""
    now = now or datetime.now(UTC)
    day = now.date() if ds is None else parse_day(ds, latest=now.date(), what="ds")
    return build_day(settings, day, require_complete_hours(settings, day))
