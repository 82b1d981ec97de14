"""`lambdaflow batch`: the batch DAGs run in process, with the same tasks as the scheduler's."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from lambdaflow.batch import airflow_home, build
from lambdaflow.batch.completeness import require_complete, require_complete_hours
from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.late import late_days
from lambdaflow.core.project import DAGS_FOLDER

log = logging.getLogger(__name__)


def _logs_to_stderr(run):
    """Once imported, Airflow logs to stdout; a process that runs several batches (the demo, a
    test's long-lived CLI) keeps every batch's log on stderr, where the CLI's logs go. Each run
    takes ``airflow_log=PATH`` to append Airflow's and dbt's output to that file instead: the run
    then ends with one line per task (and the errors of a failed one) on stderr."""

    @functools.wraps(run)
    def logging_to_stderr(*args, **kwargs):
        with stdout_to_stderr():
            return run(*args, **kwargs)

    return logging_to_stderr


@_logs_to_stderr
def run_batch(settings: Settings, day: str | None, airflow_log: Path | None = None) -> dict:
    """Run lambda_batch for ``day``, or lambda_batch_today when ``day`` is None; return the manifest.
    A day that is not complete, or bad input, fails before Airflow's database is touched."""
    now = datetime.now(UTC)
    if day is not None:
        parsed = build.parse_day(day, latest=now.date(), what="--date")
        require_complete(settings, parsed)  # fail fast instead of waiting in the sensor
        build.check_inputs(settings, parsed)  # the definition and raw files, before the DAG writes anything
        run: dict[str, dict[str, str | None]] = {"run_conf": {"ds": parsed.isoformat()}}
        dag_id = "lambda_batch"
    else:
        build.check_inputs(settings, now.date())
        require_complete_hours(settings, now.date())
        dag_id, run = "lambda_batch_today", {"run_conf": {"ds": None}}

    airflow_home.prepare(settings)
    log.info("running %s for %s", dag_id, (run.get("run_conf") or {}).get("ds") or "today")
    _test_dag(dag_id, run, airflow_log)
    return read_manifest(settings.documents)


@_logs_to_stderr
def run_range(settings: Settings, first: str, last: str, airflow_log: Path | None = None) -> dict:
    """Run lambda_batch_range for the whole days ``first`` to ``last`` (one dbt build, each day published
    as lambda_batch publishes it); return the manifest. Bad input, or a day that is not complete, fails
    before Airflow's database is touched; every day's inputs are checked before anything is written."""
    days = build.parse_range(first, last, latest=datetime.now(UTC).date())
    require_complete(settings, days[-1])  # the days before the last are complete when it is
    for day in days:
        build.check_inputs(settings, day)
    airflow_home.prepare(settings)
    log.info("running lambda_batch_range for %s to %s (%d days)", days[0], days[-1], len(days))
    conf = {"from": days[0].isoformat(), "to": days[-1].isoformat()}
    _test_dag("lambda_batch_range", {"run_conf": conf}, airflow_log)
    return read_manifest(settings.documents)


@_logs_to_stderr
def run_late(settings: Settings, airflow_log: Path | None = None) -> dict:
    """Run lambda_batch_late: rebuild the whole built days that have late raw files; return the manifest."""
    airflow_home.prepare(settings)
    late = sorted(day.isoformat() for day in late_days(settings))
    for day in late:
        build.check_inputs(settings, date.fromisoformat(day))
    log.info("running lambda_batch_late: %s", f"days with late raw files: {', '.join(late)}" if late else "no late day")
    _test_dag("lambda_batch_late", {}, airflow_log)
    return {"rebuilt": late, **read_manifest(settings.documents)}


def _test_dag(dag_id: str, run: dict, output: Path | None = None) -> None:
    """One real run of the DAG in this process (dag.test), its tasks as the scheduler would run them;
    Airflow's output on stderr, or appended to ``output`` with a line per task on stderr."""
    from airflow.sdk.definitions.param import ParamValidationError

    if output is not None:
        _say(f"{dag_id}: Airflow's and dbt's log in {output} (-v: on stderr)")
    try:
        with _output_to(output) as start:
            dag_run = load_dag(dag_id).test(logical_date=_moment_of_its_own(), **run)
    except ParamValidationError as error:  # refused before the run starts: nothing ran
        raise LambdaflowError(f"{dag_id} refused the run: {str(error).strip().splitlines()[0]}") from None
    if output is not None:  # plain lines: once imported, Airflow formats every log record its own way
        order = sorted(dag_run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date))
        for ti in order:
            _say(f"{dag_id} {ti.task_id}: {ti.state} in {ti.duration or 0.0:.1f} s")
    if str(dag_run.state) != "success":
        failed = [ti.task_id for ti in dag_run.get_task_instances() if str(ti.state) != "success"]
        where = "see the log above"
        if output is not None:
            for line in _errors_in(output, start):
                _say(f"{dag_id}: {line}")
            where = f"the whole log is in {output} (or run with -v)"
        raise LambdaflowError(f"{dag_id} failed ({', '.join(failed) or dag_run.state}); {where}")


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@contextmanager
def _output_to(path: Path | None) -> Iterator[int]:
    """File descriptors 1 and 2 appended to ``path`` for the block (nothing when None); yields where
    the block's output starts in the file."""
    if path is None:
        yield 0
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as sink:
        start = sink.tell()
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield start
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


ERROR_LINES = 10


def _errors_in(path: Path, start: int) -> list[str]:
    """The lines of the run's output that say why a task failed: exceptions and errors, at most
    ERROR_LINES of them, each once."""
    with path.open("rb") as log_file:
        log_file.seek(start)
        text = log_file.read().decode(errors="replace")
    found: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if ("Exception: " in line or "Error: " in line) and line not in found:
            found.append(line)
    return found[-ERROR_LINES:]


def _moment_of_its_own() -> datetime:
    """The logical date of an in-process run. dag.test() first deletes the DAG's run with the same
    logical date: with none, that was any run triggered without one (the way the UI triggers a
    manual run, and another `lambdaflow batch` running at the same time, which then failed on the
    deleted run). A moment of its own, to the microsecond, replaces no other run, and a daily DAG's
    scheduled runs (at midnight) never fall on it."""
    now = datetime.now(UTC)
    return now if now.time() != time.min else now + timedelta(microseconds=1)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@functools.cache
def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise LambdaflowError(f"the DAGs do not import: {bag.import_errors}")
    return bag.get_dag(dag_id)
