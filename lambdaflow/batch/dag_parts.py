"""What the DAG files share: the `ds` form field, the catch-up start, and where the docs are.

Airflow's trigger form shows a DAG's params as fields. Every DAG that takes a day takes it the
same way: one `ds` field, a calendar date or empty, validated when the run is triggered (a `ds`
such as `yesterday` is refused there, not by a task later).
"""

from __future__ import annotations

import os
import warnings

import pendulum
from airflow.sdk import Param

# `@task.sensor` imports the standard provider's PythonSensor, which itself imports a name Airflow 3
# deprecated: a warning in every task's log that no DAG of ours can act on.
warnings.filterwarnings(
    "ignore", message="The `airflow.utils.operator_helpers.determine_kwargs` attribute is deprecated"
)

DOCS_HINT = (
    "The models and columns it builds are documented on the dbt docs site "
    "(`make up` or `make docs`: http://127.0.0.1:8081), the numbers on the dashboard (http://127.0.0.1:8082)."
)


def day_param(empty_means: str) -> Param:
    """The `ds` field: a UTC day (YYYY-MM-DD) or empty; ``empty_means`` says what an empty one builds."""
    return Param(
        None,
        type=["null", "string"],
        format="date",
        title="ds: UTC day (YYYY-MM-DD)",
        description=f"Empty: {empty_means} Backfill runs ignore it: each builds its own day.",
    )


def start_date() -> pendulum.DateTime:
    """Where lambda_batch's catch-up starts: LAMBDAFLOW_BATCH_START_DATE, default a week ago."""
    configured = os.environ.get("LAMBDAFLOW_BATCH_START_DATE")
    if configured:
        parsed = pendulum.parse(configured, tz="UTC")
        if not isinstance(parsed, pendulum.DateTime):
            raise ValueError(f"LAMBDAFLOW_BATCH_START_DATE {configured!r} is not a date (YYYY-MM-DD)")
        return parsed
    return pendulum.today("UTC").subtract(days=7)
