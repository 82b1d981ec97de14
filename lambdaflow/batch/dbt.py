"""dbt, run in this process over the project's dbt project (dbt-duckdb)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lambdaflow.core import metrics
from lambdaflow.core.config import Settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.project import DBT_PROJECT_DIR
from lambdaflow.core.storage import AWS_VARIABLES, Storage

AFTER_EACH_RUN: list[Callable[[tuple[str, ...]], None]] = []
"""Called with the arguments of each dbt invocation that succeeded, before the next one starts
(while its ``run_results.json`` is still the target's): the benchmark keeps model timings so."""


def run_dbt(settings: Settings, *args: str) -> None:
    """Run dbt in this process: importing dbt costs seconds, so a process that builds
    several days (a backfill, the demo) pays it once."""
    from dbt.cli.main import dbtRunner

    metrics.defined()  # the models build their columns from it: a bad one is refused before dbt runs
    _quiet_resource_tracker()
    os.environ["LAMBDAFLOW_DATA_DIR"] = str(settings.data_dir)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    try:
        with _storage_in_environment(settings.storage):
            result = dbtRunner().invoke(
                [*args, "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)]
            )
    finally:
        _release_warehouse()
    if not result.success:
        raise LambdaflowError(f"dbt {args[0]} failed: {_dbt_failure(result)}")
    for listener in AFTER_EACH_RUN:
        listener(args)


@contextmanager
def _storage_in_environment(storage: Storage) -> Iterator[None]:
    """The settings' storage, for the profile's plugin (:mod:`lambdaflow.batch.dbt_storage`) while
    dbt runs; the variables are put back after, so no later reader in this process sees them."""
    wanted = {"LAMBDAFLOW_STORAGE_URL": storage.url, **storage.aws}
    names = ["LAMBDAFLOW_STORAGE_URL", *AWS_VARIABLES]
    before = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.pop(name, None)
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


RESOURCE_TRACKER_WARNING = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    """dbt creates multiprocessing locks that live as long as the process. An Airflow task process
    ends without finalizing them, so multiprocessing's resource tracker, a process of its own, removes
    them and warns "There appear to be N leaked semaphore objects" in red at the end of every
    successful build's log. Nothing leaks: removing them is the tracker's job. The tracker is started
    with this process's -W options when dbt creates its first lock, so this one is added here, before."""
    if RESOURCE_TRACKER_WARNING not in sys.warnoptions:
        sys.warnoptions.append(RESOURCE_TRACKER_WARNING)


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


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def as_vars(variables: dict) -> str:
    """``variables`` as the YAML that dbt's --vars and --args take (JSON is YAML)."""
    return json.dumps(variables)
