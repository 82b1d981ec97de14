"""The DAG files: they import, they are well formed, and parsing them is cheap."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time

import pytest

from lambdaflow.batch import airflow_home
from lambdaflow.core.config import Settings
from lambdaflow.core.project import DAGS_FOLDER

EXPECTED = {
    "lambda_batch",
    "lambda_batch_today",
    "lambda_batch_late",
    "lambda_batch_range",
    "lambda_tables_maintenance",
}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    settings = Settings.from_env({"LAMBDAFLOW_DATA_DIR": str(tmp_path_factory.mktemp("airflow-data"))})
    saved = dict(os.environ)
    os.environ.update(airflow_home.airflow_env(settings))
    try:
        from airflow.dag_processing.dagbag import DagBag

        started = time.perf_counter()
        bag = DagBag(dag_folder=str(DAGS_FOLDER))
        bag.parse_seconds = time.perf_counter() - started
        yield bag
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_every_dag_has_tags_retries_an_owner_and_docs(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.tags and "lambdaflow" in dag.tags
    assert dag.doc_md and dag_id in dag.doc_md
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.owner == "lambdaflow"
        assert task.retries >= 1
        if dag_id.startswith("lambda_batch"):  # they write the warehouse; the maintenance DAG does not
            assert task.pool == airflow_home.WAREHOUSE_POOL


def test_lambda_batch_runs_daily_over_its_data_interval(dagbag) -> None:
    from airflow.timetables.interval import CronDataIntervalTimetable

    dag = dagbag.dags["lambda_batch"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.catchup is True


def test_parsing_the_dags_folder_calls_neither_dbt_nor_the_warehouse(tmp_path) -> None:
    """A fresh interpreter with Airflow loaded, as in the DAG processor, runs each DAG file."""
    probe = (
        "import sys, runpy, time\n"
        "import airflow.sdk, airflow.sdk.bases.sensor, airflow.timetables.interval, pendulum\n"
        "t = time.perf_counter()\n"
        f"runpy.run_path({str(DAGS_FOLDER / 'lambda_batch.py')!r})\n"
        f"runpy.run_path({str(DAGS_FOLDER / 'lambda_batch_today.py')!r})\n"
        f"runpy.run_path({str(DAGS_FOLDER / 'lambda_batch_late.py')!r})\n"
        f"runpy.run_path({str(DAGS_FOLDER / 'lambda_batch_range.py')!r})\n"
        "heavy = sorted(m for m in ('dbt', 'duckdb', 'polars', 'kafka') if m in sys.modules)\n"
        "print(heavy, round(time.perf_counter() - t, 3))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy, seconds = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert heavy == "[]"
    print(f"DAG files parsed in {seconds} s")


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_every_dag_says_what_it_does_and_where_its_docs_are(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.description and len(dag.description) < 120  # one line in the DAG list
    assert "http://127.0.0.1:8081" in dag.doc_md


def test_one_ds_field_in_every_dag_that_takes_a_day_refused_at_the_trigger_unless_a_date(dagbag) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    with_ds = {dag_id: dag for dag_id, dag in dagbag.dags.items() if "ds" in dag.params}
    assert set(with_ds) == {"lambda_batch", "lambda_batch_today"}
    schemas = {dag_id: dict(dag.params.get_param("ds").schema) for dag_id, dag in with_ds.items()}
    assert schemas["lambda_batch"]["format"] == "date"
    assert {k: v for k, v in schemas["lambda_batch"].items() if k != "description"} == {
        k: v for k, v in schemas["lambda_batch_today"].items() if k != "description"
    }
    for dag in with_ds.values():
        for value, valid in ((None, True), ("2026-11-30", True), ("yesterday", False), ("30.11.2026", False)):
            params = copy.deepcopy(dag.params)
            if valid:
                params["ds"] = value  # as a trigger's conf sets it
                assert params.validate()["ds"] == value
            else:
                with pytest.raises(ParamValidationError):
                    params["ds"] = value
                    params.validate()


def test_only_a_run_triggered_by_hand_builds_its_ds() -> None:
    from datetime import UTC, date, datetime
    from types import SimpleNamespace

    from lambdaflow.batch.build import run_day

    interval = datetime(2026, 11, 29, tzinfo=UTC)
    asked = {"ds": "2026-11-27"}
    assert run_day(asked, interval, SimpleNamespace(run_type="manual")) == date(2026, 11, 27)
    assert run_day(asked, interval, None) == date(2026, 11, 27)  # `lambdaflow batch --date` runs dag.test()
    for run_type in ("backfill", "scheduled"):  # a backfill's form offers ds: each run still builds its own day
        assert run_day(asked, interval, SimpleNamespace(run_type=run_type)) == date(2026, 11, 29)
    assert run_day({"ds": None}, interval, SimpleNamespace(run_type="manual")) == date(2026, 11, 29)
