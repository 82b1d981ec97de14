"""
### lambda_batch

Builds one UTC day of the batch layer per run: the run's data interval is the
day (`ds`). It waits until the archiver has seen the whole day on every
partition (invariant 6), runs `dbt build` for that day over the day's raw
files only, and publishes the built hours with a new serving boundary.

Catches up from `LAMBDAFLOW_BATCH_START_DATE` (default: a week ago); backfill
with `airflow backfill create --dag-id lambda_batch --from-date D1 --to-date D2`
or the UI's backfill form. Rebuilding a day gives the same tables.

Triggered by hand, give the day in the `ds` field; left empty, the run builds
its data interval, which for the logical date the form fills in is yesterday.
Clearing the logical date keeps the run from taking the one a scheduled run
needs. A backfill ignores `ds`: each of its runs builds its own day. A `ds`
that is not a date is refused at the trigger; a day in the future, a damaged
raw file or a bad metrics definition fails the task at once, without retries
and before anything is written.

After the build, `reconcile_day` compares the day's batch numbers with the
speed layer's per metric and hour, writes the report that `lambdaflow
reconcile --date D` prints, and fails when a difference that neither late
events nor the speed layer's lag explain is above
`LAMBDAFLOW_RECONCILE_THRESHOLD` (default 0), naming the metric and hour.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task
from airflow.sdk.bases.sensor import PokeReturnValue
from airflow.timetables.interval import CronDataIntervalTimetable

from lambdaflow.batch.dag_parts import DOCS_HINT, day_param, start_date


@dag(
    dag_id="lambda_batch",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=start_date(),
    catchup=True,
    max_active_runs=1,
    default_args={"owner": "lambdaflow", "retries": 2, "retry_delay": timedelta(minutes=2), "pool": "warehouse"},
    params={"ds": day_param("the run's data interval: with the logical date the form fills in, yesterday.")},
    tags=["lambdaflow", "batch"],
    description="Builds one closed UTC day (dbt), publishes it with the serving boundary, reconciles it.",
    doc_md=f"{__doc__}\n{DOCS_HINT}",
)
def lambda_batch():
    @task.sensor(poke_interval=60, timeout=6 * 3600, mode="reschedule")
    def wait_for_complete_day(params=None, data_interval_start=None, dag_run=None) -> PokeReturnValue:
        from lambdaflow.batch import build
        from lambdaflow.batch.completeness import completeness
        from lambdaflow.core.config import settings

        config = settings()
        state = completeness(config)
        with build.failing_at_once():  # a ds in the future or not a date: no retry makes it right
            day = build.run_day(params, data_interval_start, dag_run)
        if not state.day_is_complete(day):
            print(state.explain(day, config.allowed_lateness))
        return PokeReturnValue(is_done=state.day_is_complete(day))

    @task
    def build_day(params=None, data_interval_start=None, dag_run=None) -> str:
        from lambdaflow.batch import build
        from lambdaflow.core.config import settings

        with build.failing_at_once():  # a bad definition or raw file: nothing is written, no retry
            manifest = build.build_day(settings(), build.run_day(params, data_interval_start, dag_run))
        return manifest["boundary"]

    @task
    def reconcile_day(params=None, data_interval_start=None, dag_run=None) -> dict:
        from lambdaflow.batch import build
        from lambdaflow.core.config import settings
        from lambdaflow.serving.reconcile import reconcile, require_within_threshold

        config = settings()
        with build.failing_at_once():
            rows = reconcile(config, build.run_day(params, data_interval_start, dag_run))
        for row in rows:
            print(
                {
                    k: row[k]
                    for k in (
                        "metric",
                        "batch",
                        "speed",
                        "explained_by_late_events",
                        "explained_by_speed_lag",
                        "unexplained",
                    )
                }
            )
        require_within_threshold(rows, config.reconcile_threshold)
        return {row["metric"]: row["unexplained"] for row in rows}

    wait_for_complete_day() >> build_day() >> reconcile_day()


lambda_batch()
