"""
### lambda_batch_late

Late data is never lost (invariant 8). Every 30 minutes this DAG looks for
whole built days whose raw store gained files after their build (events that
arrived after the day was complete), rebuilds each such day, and reconciles
it with the speed layer as `lambda_batch` does. `lambdaflow status` lists the
days waiting for it; `lambdaflow batch --late` runs it by hand.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from lambdaflow.batch.dag_parts import DOCS_HINT


@dag(
    dag_id="lambda_batch_late",
    schedule="*/30 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "lambdaflow", "retries": 2, "retry_delay": timedelta(minutes=2), "pool": "warehouse"},
    tags=["lambdaflow", "batch", "late-data"],
    description="Every 30 minutes: rebuilds each built day whose raw store gained late files since its build.",
    doc_md=f"{__doc__}\n{DOCS_HINT}",
)
def lambda_batch_late():
    @task
    def rebuild_late_days() -> list[str]:
        from lambdaflow.batch import build
        from lambdaflow.core.config import settings

        with build.failing_at_once():
            return build.rebuild_late_days(settings())

    @task
    def reconcile_rebuilt_days(days: list[str]) -> None:
        from datetime import date

        from lambdaflow.batch import build
        from lambdaflow.core.config import settings
        from lambdaflow.serving.reconcile import reconcile, require_within_threshold

        config = settings()
        for day in days:
            with build.failing_at_once():
                rows = reconcile(config, date.fromisoformat(day))
            require_within_threshold(rows, config.reconcile_threshold)

    reconcile_rebuilt_days(rebuild_late_days())


lambda_batch_late()
