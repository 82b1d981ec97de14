"""The Airflow installation lambdaflow runs its DAGs in: SQLite under the data directory.

Environment variables already set (AIRFLOW__...) win over these defaults, so a
real deployment configures Airflow the usual way.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from lambdaflow.core.config import Settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.project import DAGS_FOLDER

log = logging.getLogger(__name__)

WAREHOUSE_POOL = "warehouse"


def airflow_env(settings: Settings) -> dict[str, str]:
    home = settings.layout.airflow_home
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # SQLite takes one writer at a time; its busy timeout (5 s by default) is how long the others wait
        # before they fail with "database is locked": under load, a scheduler, a DAG processor and a
        # CLI command writing at once took longer than that, and the DAG processor exited on it.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=60",
        "AIRFLOW__SCHEDULER__CREATE_CRON_DATA_INTERVALS": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "LAMBDAFLOW_DATA_DIR": str(settings.data_dir),
    }
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


def prepare(settings: Settings) -> dict[str, str]:
    """Set Airflow's environment for this process and create its database once."""
    env = airflow_env(settings)
    os.environ.update(env)
    home = Path(env["AIRFLOW_HOME"])
    ready = home / ".lambdaflow-ready"
    if not ready.exists():
        home.mkdir(parents=True, exist_ok=True)
        log.info("creating the Airflow database in %s (once)", home)
        airflow = str(Path(sys.executable).parent / "airflow")
        for command in (
            [airflow, "db", "migrate"],
            [airflow, "pools", "set", WAREHOUSE_POOL, "1", "one writer to the dbt warehouse"],
        ):
            done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
            if done.returncode != 0:
                raise LambdaflowError(f"{' '.join(command[1:3])} failed: {done.stderr.strip().splitlines()[-1:]}")
        ready.touch()
    return env
