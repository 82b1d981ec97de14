"""
### lambda_batch_range

Builds a range of whole UTC days in one run: the `from` and `to` fields
(inclusive, YYYY-MM-DD). It waits until the archiver has seen the last day
whole on every partition (invariant 6), runs one `dbt build` over the raw
files of all the days, then publishes each day, oldest first, exactly as a
`lambda_batch` run for that day would: the same files, the same manifest
and boundary, the same build records. This is the fast way to backfill or
catch up: one build and one export for the range instead of three task
processes and a dbt build per day. `lambdaflow batch --from D1 --to D2`
runs it in process.

Trigger it with the two days and no logical date. A day that is not a date,
`from` after `to`, a day in the future, a damaged raw file or a bad metrics
definition fails the task at once, without retries and before anything is
written. After the build, `reconcile_days` reconciles each day with the
speed layer as `lambda_batch` does, logs one line per day, returns each
day's unexplained difference per metric, and fails naming every day whose
difference is above `LAMBDAFLOW_RECONCILE_THRESHOLD`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.bases.sensor import PokeReturnValue

from lambdaflow.batch.dag_parts import DOCS_HINT

_DAY = {"type": "string", "format": "date"}


@dag(
    dag_id="lambda_batch_range",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "lambdaflow", "retries": 2, "retry_delay": timedelta(minutes=2), "pool": "warehouse"},
    params={
        # No default: a run is refused at the trigger unless both are dates of the calendar.
        "from": Param(**_DAY, title="First UTC day (YYYY-MM-DD)", description="Built whole, like every day."),
        "to": Param(**_DAY, title="Last UTC day (YYYY-MM-DD)", description="Inclusive; a closed day."),
    },
    tags=["lambdaflow", "batch", "backfill"],
    description="Backfill or catch up: builds the whole UTC days from..to in one dbt build, then each day.",
    doc_md=f"{__doc__}\n{DOCS_HINT}",
)
def lambda_batch_range():
    @task.sensor(poke_interval=60, timeout=6 * 3600, mode="reschedule")
    def wait_for_complete_days(params=None) -> PokeReturnValue:
        from lambdaflow.batch import build
        from lambdaflow.batch.completeness import completeness
        from lambdaflow.core.config import settings

        config = settings()
        with build.failing_at_once():  # a bad range: no retry makes it right
            last = build.run_days(params)[-1]
        state = completeness(config)
        if not state.day_is_complete(last):
            print(state.explain(last, config.allowed_lateness))
        return PokeReturnValue(is_done=state.day_is_complete(last))

    @task
    def build_days(params=None) -> list[str]:
        from lambdaflow.batch import build
        from lambdaflow.core.config import settings

        with build.failing_at_once():  # a bad definition or raw file: nothing is written, no retry
            days = build.run_days(params)
            build.build_days(settings(), days[0], days[-1])
        return [day.isoformat() for day in days]

    @task
    def reconcile_days(days: list[str]) -> dict:
        from datetime import date

        from lambdaflow.batch import build
        from lambdaflow.core.config import settings
        from lambdaflow.core.errors import LambdaflowError
        from lambdaflow.serving.reconcile import reconcile as compare
        from lambdaflow.serving.reconcile import require_within_threshold

        config = settings()
        unexplained, failed = {}, []
        for day in days:
            with build.failing_at_once():
                rows = compare(config, date.fromisoformat(day))
            unexplained[day] = {row["metric"]: row["unexplained"] for row in rows}
            try:
                require_within_threshold(rows, config.reconcile_threshold)
                print(f"{day}: reconciled, {unexplained[day]}")
            except LambdaflowError as error:
                print(str(error))
                failed.append(day)
        if failed:
            raise LambdaflowError(f"{len(failed)} of {len(days)} days differ beyond the threshold: {failed}")
        return unexplained

    built = build_days()
    wait_for_complete_days() >> built
    reconcile_days(built)


lambda_batch_range()
