"""
### lambda_tables_maintenance

Compaction and retention for the tables, as Delta provides them. Every day at
03:30 UTC this DAG merges the raw events table's small files (per day, Kafka
partition and log epoch; every row kept, in Kafka order), then vacuums the
events, dead-letter and published-hours tables: it removes the files that no
table version of the kept period needs (merged files, a dead-letter file a
later batch replaced, a file a crashed or fenced commit never committed), and
writes a checkpoint so that opening a table stays one read. A file of the
current version is never removed. `lambdaflow maintain` does the same by hand
(`--dry-run` says what it would do).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from lambdaflow.batch.dag_parts import DOCS_HINT


@dag(
    dag_id="lambda_tables_maintenance",
    schedule="30 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "lambdaflow", "retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["lambdaflow", "raw-store", "compaction", "retention"],
    description="Daily: compacts the raw events, vacuums and checkpoints the tables; current files always stay.",
    doc_md=f"{__doc__}\n{DOCS_HINT}",
    params={
        "keep_hours": Param(
            168,
            type="integer",
            minimum=1,
            title="keep_hours: hours of table versions whose files stay",
            description="A file no version of this period needs is removed. At least 1.",
        )
    },
)
def lambda_tables_maintenance():
    @task
    def compact_and_vacuum_tables(params=None) -> list[dict]:
        from lambdaflow.batch import build
        from lambdaflow.batch.maintenance import maintain_tables
        from lambdaflow.core.config import settings

        with build.failing_at_once():
            return maintain_tables(settings(), keep=timedelta(hours=int((params or {}).get("keep_hours", 168))))

    compact_and_vacuum_tables()


lambda_tables_maintenance()
