"""
### lambda_batch_today

The manual batch for today so far: builds the complete hours of a UTC day
(the `ds` form field; empty means today at run time) and moves the serving
boundary to the last of them. Trigger it without a logical date, so it never
blocks the scheduled `lambda_batch` run for that day, which later rebuilds the
whole day.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from lambdaflow.batch.dag_parts import DOCS_HINT, day_param


@dag(
    dag_id="lambda_batch_today",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "lambdaflow", "retries": 1, "retry_delay": timedelta(minutes=1), "pool": "warehouse"},
    params={"ds": day_param("today (UTC), at run time. The complete hours of the day are built.")},
    tags=["lambdaflow", "batch", "manual"],
    description="Builds today's complete hours so far and moves the serving boundary to their end.",
    doc_md=f"{__doc__}\n{DOCS_HINT}",
)
def lambda_batch_today():
    @task
    def build_complete_hours(params=None) -> str:
        from lambdaflow.batch import build
        from lambdaflow.core.config import settings

        with build.failing_at_once():  # a bad ds, definition or raw file: nothing is written, no retry
            return build.build_today(settings(), params.get("ds"))["boundary"]

    build_complete_hours()


lambda_batch_today()
