"""The DAG files: they import, they are well formed, and parsing them is cheap."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lambdaflow.batch import airflow_home
from lambdaflow.core.config import Settings
from lambdaflow.core.project import DAGS_FOLDER

EXPECTED = {"lambda_batch", "lambda_batch_today", "lambda_batch_late", "lambda_batch_range"}


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
