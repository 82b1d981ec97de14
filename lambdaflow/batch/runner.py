"""`lambdaflow batch`: the batch DAGs run in process, with the same tasks as the scheduler's."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta

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
    test's long-lived CLI) keeps every batch's log on stderr, where the CLI's logs go."""

    @functools.wraps(run)
    def logging_to_stderr(*args, **kwargs):
        with stdout_to_stderr():
            return run(*args, **kwargs)

    return logging_to_stderr


@_logs_to_stderr
def run_batch(settings: Settings, day: str | None) -> dict:
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
    _test_dag(dag_id, run)
    return read_manifest(settings.data_dir)


@_logs_to_stderr
def run_range(settings: Settings, first: str, last: str) -> dict:
    """Run lambda_batch_range for the whole days ``first`` to ``last`` (one dbt build, each day published
    as lambda_batch publishes it); return the manifest. Bad input, or a day that is not complete, fails
    before Airflow's database is touched; every day's inputs are checked before anything is written."""
    days = build.parse_range(first, last, latest=datetime.now(UTC).date())
    require_complete(settings, days[-1])  # the days before the last are complete when it is
    for day in days:
        build.check_inputs(settings, day)
    airflow_home.prepare(settings)
    log.info("running lambda_batch_range for %s to %s (%d days)", days[0], days[-1], len(days))
    _test_dag("lambda_batch_range", {"run_conf": {"from": days[0].isoformat(), "to": days[-1].isoformat()}})
    return read_manifest(settings.data_dir)


@_logs_to_stderr
def run_late(settings: Settings) -> dict:
    """Run lambda_batch_late: rebuild the whole built days that have late raw files; return the manifest."""
    airflow_home.prepare(settings)
    late = sorted(day.isoformat() for day in late_days(settings))
    for day in late:
        build.check_inputs(settings, date.fromisoformat(day))
    log.info("running lambda_batch_late: %s", f"days with late raw files: {', '.join(late)}" if late else "no late day")
    _test_dag("lambda_batch_late", {})
    return {"rebuilt": late, **read_manifest(settings.data_dir)}


def _test_dag(dag_id: str, run: dict) -> None:
    """One real run of the DAG in this process (dag.test), its tasks as the scheduler would run them."""
    from airflow.sdk.definitions.param import ParamValidationError

    try:
        dag_run = load_dag(dag_id).test(logical_date=_moment_of_its_own(), **run)
    except ParamValidationError as error:  # refused before the run starts: nothing ran
        raise LambdaflowError(f"{dag_id} refused the run: {str(error).strip().splitlines()[0]}") from None
    if str(dag_run.state) != "success":
        failed = [ti.task_id for ti in dag_run.get_task_instances() if str(ti.state) != "success"]
        raise LambdaflowError(f"{dag_id} failed ({', '.join(failed) or dag_run.state}); see the log above")


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
