"""The batch layer's steps, called by the DAGs and by `lambdaflow batch`.

* :func:`completeness`: is a UTC day (or how much of today) complete? (invariant 6)
* :func:`build`: dbt build for one day, reading only that day's covered raw files.
* :func:`publish`: export the built hours to Parquet and replace the batch manifest,
  whose boundary is the end of the contiguous run of built hours (invariant 5).

Only dbt writes the warehouse, and only under the warehouse lock: the Airflow
pool serialises scheduled runs, the lock also covers in-process runs.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from stream_worker import days, late, metrics
from stream_worker.boundary import manifest_path, read_manifest
from stream_worker.config import Settings
from stream_worker.contract import EVENT_SCHEMA
from stream_worker.errors import InputError, LambdaflowError
from stream_worker.files import (
    PROGRESS_ONLY,
    DamagedFile,
    fsync_file,
    publish_replacing,
    read_json,
    replace_json,
    temp_path_for,
)
from stream_worker.raw_store import RawStore, read_ends
from stream_worker.warehouse import warehouse_lock

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
DAY = timedelta(days=1)


class DayNotComplete(LambdaflowError):
    """The archiver has not yet seen the end of the day on every partition."""


def parse_day(text: object, *, latest: date | None = None, what: str | None = None) -> date:
    """A UTC day as YYYY-MM-DD; anything else is a clear error (an InputError)."""
    return days.parse_day(text, what, latest=latest)


def run_day(params: dict | None, data_interval_start: datetime | None) -> date:
    """The day a lambda_batch run builds: its `ds` param when triggered by hand, else its data interval."""
    chosen = (params or {}).get("ds")
    if chosen is not None:
        return parse_day(chosen, latest=datetime.now(UTC).date(), what="ds")
    if data_interval_start is None:
        raise InputError("a run without a data interval needs the day in its ds param (YYYY-MM-DD)")
    return data_interval_start.date()


@contextmanager
def failing_at_once() -> Iterator[None]:
    """Bad input (a day, the metrics definition, a damaged raw file) fails the task without retries:
    a retry would read the same input. The task log then ends with the one line that says why."""
    try:
        yield
    except InputError as error:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(error)) from None


# completeness (invariant 6)


@dataclass(frozen=True)
class Completeness:
    complete_until: datetime | None
    """Every event before this instant has been archived on every partition (None: nothing yet)."""
    partitions: dict[int, str]
    """Per partition, what the archiver has reported."""

    def day_is_complete(self, day: date) -> bool:
        return self.complete_until is not None and self.complete_until >= _start_of(day) + DAY

    def explain(self, day: date, lateness: timedelta) -> str:
        detail = "; ".join(f"partition {p}: {text}" for p, text in sorted(self.partitions.items()))
        return (
            f"day {day} is not complete yet: every partition's archiver must see event time pass "
            f"{_start_of(day) + DAY + lateness:%Y-%m-%d %H:%M} UTC, or catch up after then "
            f"({detail or 'no archiver has reported yet'})"
        )


def completeness(settings: Settings) -> Completeness:
    """How far the raw store is complete, from the archiver's status files.

    A partition is complete up to its event-time watermark less the allowed
    lateness, or up to the wall-clock time it last caught up with the log's end
    less the allowed lateness, whichever is later. Every partition of the topic
    counts, as the broker reported them to the archivers, not a configured number.
    """
    store = RawStore(settings.data_dir, settings.topic)
    expected = store.partitions(fallback=settings.partitions)
    reported: dict[int, str] = {}
    horizons = []
    for partition in expected:
        status = read_json(store.status_path(partition), PROGRESS_ONLY)
        if status is None:
            reported[partition] = "not archived yet"
            continue
        marks = [datetime.fromisoformat(v) for v in (status.get("watermark"), status.get("caught_up_at")) if v]
        if status.get("updated_at"):  # no mark runs ahead of the report that holds it (invariant 6)
            marks = [min(mark, datetime.fromisoformat(status["updated_at"])) for mark in marks]
        if not marks:
            reported[partition] = "no event time seen, never caught up"
            continue
        horizon = max(marks) - settings.allowed_lateness
        horizons.append(horizon)
        reported[partition] = f"complete until {horizon:%Y-%m-%d %H:%M} UTC"
    complete_until = min(horizons) if len(horizons) == len(expected) else None
    return Completeness(complete_until, reported)


def require_complete(settings: Settings, day: date) -> None:
    state = completeness(settings)
    if not state.day_is_complete(day):
        raise DayNotComplete(state.explain(day, settings.allowed_lateness))


def complete_hours_of(settings: Settings, day: date) -> datetime:
    """The end of the last complete hour of ``day`` (its start when none is complete)."""
    state = completeness(settings)
    start = _start_of(day)
    if state.complete_until is None or state.complete_until <= start:
        return start
    end = min(state.complete_until, start + DAY)
    return end.replace(minute=0, second=0, microsecond=0)


# building


def check_inputs(settings: Settings, day: date) -> tuple[list[Path], dict[str, str]]:
    """Refuse bad input before anything is written: the metrics definition, the batch manifest the
    build will extend, and the day's raw files (each a whole Parquet file; none that the day's last
    build read missing or changed).

    Returns the day's covered raw files and their SHA-256 by name. Writes nothing.
    """
    metrics.defined()
    read_manifest(settings.data_dir)
    files = RawStore(settings.data_dir, settings.topic).files_for_date(day)
    return files, late.require_as_built(settings, day, files)


def raw_files_for(settings: Settings, day: date, files: list[Path] | None = None) -> list[Path]:
    """The day's raw files the archiver's manifests cover; an empty day reads one empty file."""
    files = RawStore(settings.data_dir, settings.topic).files_for_date(day) if files is None else files
    if files:
        return files
    empty = settings.data_dir / "batch" / "empty" / f"event_date={day.isoformat()}" / "empty.parquet"
    if not empty.exists():
        empty.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(schema=EVENT_SCHEMA).drop("event_date").write_parquet(empty)
    return [empty]


def build(settings: Settings, day: date, until: datetime | None = None) -> dict:
    """dbt build for one UTC day (all of it, or the hours before ``until``), then publish it."""
    until = _start_of(day) + DAY if until is None else until
    covered, digests = check_inputs(settings, day)
    files = raw_files_for(settings, day, covered)
    variables = {
        "ds": day.isoformat(),
        "until": None if until >= _start_of(day) + DAY else until.isoformat(),
        "raw_files": "[" + ", ".join(_sql_string(str(f)) for f in files) + "]",
    }
    with warehouse_lock(settings):
        log.info("dbt build for %s (until %s) over %d raw files", day, until.isoformat(), len(files))
        _dbt(settings, "build", "--vars", _yaml(variables))
        read = read_ends(covered, RawStore(settings.data_dir, settings.topic).manifests())
        published = publish(settings, day, until, variables, read)
        late.record_build(settings, day, covered, digests)
    return published


# late data (invariant 8)


def rebuild_late_days(settings: Settings) -> list[str]:
    """Rebuild every whole built day that has late raw files, so the served answer includes them."""
    rebuilt = []
    for day, count in late.late_days(settings).items():
        log.info("%s has %d raw file(s) published after its build: rebuilding it", day, count)
        build(settings, day)
        rebuilt.append(day.isoformat())
    if not rebuilt:
        log.info("no built day has late raw files")
    return rebuilt


def _dbt(settings: Settings, *args: str) -> None:
    """Run dbt in this process: importing dbt costs seconds, so a process that builds
    several days (a backfill, the demo) pays it once."""
    from dbt.cli.main import dbtRunner

    os.environ["LAMBDAFLOW_DATA_DIR"] = str(settings.data_dir)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    try:
        result = dbtRunner().invoke(
            [*args, "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)]
        )
    finally:
        _release_warehouse()
    if not result.success:
        raise LambdaflowError(f"dbt {args[0]} failed: {_dbt_failure(result)}")


def _release_warehouse() -> None:
    """dbt-duckdb keeps the warehouse open for the rest of the process; a process that builds
    again later (the demo, a long-lived runner) would hold DuckDB's file lock in between and shut
    out every other reader and writer. Released after each invocation, as a dbt process exiting does."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    DuckDBConnectionManager.close_all_connections()


def _dbt_failure(result) -> str:
    """Why a dbt invocation failed, on one line: its exception, or the first failing nodes' messages."""
    if result.exception is not None:
        text = str(result.exception)
    else:
        failed = [r for r in getattr(result.result, "results", None) or [] if r.status in ("error", "fail")]
        text = "; ".join(f"{r.node.name}: {r.message}" for r in failed[:3]) or "see the dbt log above"
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:597] + "..."


# publishing (invariant 5)


def publish(
    settings: Settings, day: date, until: datetime, variables: dict, covered: dict[str, dict[str, int]] | None = None
) -> dict:
    """Export the day's built hours and swap the batch manifest to include them, with what the build
    read of each partition (``covered``): the speed layer tells by it which users the batch counted."""
    batch_dir = settings.data_dir / "batch"
    final = batch_dir / "published" / f"event_date={day.isoformat()}" / f"hourly-{uuid.uuid4().hex[:12]}.parquet"
    temp = temp_path_for(final, settings.data_dir / "tmp" / "batch")
    export_args = {"ds": day.isoformat(), "until": until.replace(tzinfo=None).isoformat(sep=" "), "path": str(temp)}
    _dbt(settings, "run-operation", "export_built_hours", "--args", _yaml(export_args), "--vars", _yaml(variables))
    fsync_file(temp)
    publish_replacing(temp, final)  # the file and its new folder are durable before the manifest names them

    manifest = read_manifest(settings.data_dir) or {"days": {}}
    days = dict(manifest.get("days", {}))
    replaced = days.get(day.isoformat())
    days[day.isoformat()] = {
        "file": str(final.relative_to(settings.data_dir)),
        "built_until": until.isoformat(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "covered": covered or {},
    }
    previous = manifest.get("boundary")
    boundary = _contiguous_end(days, since=datetime.fromisoformat(previous) if previous else None)
    document = {
        "boundary": boundary.isoformat(),
        "days": dict(sorted(days.items())),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    replace_json(manifest_path(settings.data_dir), document)
    if replaced:
        _remove_later(settings, replaced["file"])
    log.info("published %s until %s; boundary %s", day, until.isoformat(), document["boundary"])
    return document


def _contiguous_end(days: dict[str, dict], since: datetime | None) -> datetime:
    """The end of the run of built hours that reaches ``since`` (the boundary so far), or that starts
    at the earliest built day when there is none yet. It never moves back, and a day built far
    before the boundary, or rebuilt with fewer hours, does not hold it where it is."""
    end = since
    for key in sorted(days):
        start = _start_of(date.fromisoformat(key))
        if end is None:
            end = start
        if start > end:  # a day not built (or built only in part) lies in between
            break
        end = max(end, datetime.fromisoformat(days[key]["built_until"]))
    if end is None:
        raise ValueError("no day built and no boundary: there is no contiguous run of built hours")
    return end


def _remove_later(settings: Settings, relative: str) -> None:
    """A replaced file may still be read by a query that began before the swap: keep it a while."""
    retired = settings.data_dir / "batch" / "retired.json"
    entries = _retired_entries(retired)
    now = datetime.now(UTC)
    keep = []
    for entry in entries + [{"file": relative, "retired_at": now.isoformat()}]:
        if now - datetime.fromisoformat(entry["retired_at"]) > timedelta(minutes=10):
            (settings.data_dir / entry["file"]).unlink(missing_ok=True)
        else:
            keep.append(entry)
    replace_json(retired, keep)


def _retired_entries(path: Path) -> list[dict]:
    """The replaced files still kept, from ``path``. It only schedules deletions, and it is read after
    the day is published: a damaged list, or an entry that names no published file, is logged and
    dropped (its file stays on disk) instead of failing a build that has already published."""
    try:
        document = read_json(path)
    except DamagedFile as error:
        log.warning("%s; writing it anew (the files it listed stay on disk)", error)
        return []
    kept = []
    for entry in document if isinstance(document, list) else [document] if document is not None else []:
        try:
            file = Path(entry["file"])
            aware = datetime.fromisoformat(entry["retired_at"]).tzinfo is not None
            valid = aware and file.parts[:2] == ("batch", "published") and ".." not in file.parts
        except (TypeError, KeyError, ValueError):
            valid = False
        if valid:
            kept.append(entry)
        else:
            log.warning("%s: dropping %r, which names no replaced published file", path, entry)
    return kept


def _start_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _yaml(variables: dict) -> str:
    import json

    return json.dumps(variables)  # JSON is YAML


def hours_to_build(settings: Settings, day: date) -> datetime:
    """Where a manual run for ``day`` builds to: the end of its complete hours, and never short of the
    boundary. Hours before the boundary are served by the batch alone, so a rebuild with a larger
    allowed lateness (or a clock that went back) must still cover them, or no layer would serve them."""
    until = complete_hours_of(settings, day)
    boundary = read_manifest(settings.data_dir).get("boundary")
    if boundary:
        until = max(until, min(datetime.fromisoformat(boundary), _start_of(day) + DAY))
    return until


def build_today(settings: Settings, ds: object = None, now: datetime | None = None) -> dict:
    """The manual run: the complete hours of ``ds`` (None: today), boundary moved to the last of them."""
    now = now or datetime.now(UTC)
    day = now.date() if ds is None else parse_day(ds, latest=now.date(), what="ds")
    until = hours_to_build(settings, day)
    if until <= _start_of(day):
        raise DayNotComplete(
            f"no hour of {day} is complete yet; " + completeness(settings).explain(day, settings.allowed_lateness)
        )
    return build(settings, day, until)
