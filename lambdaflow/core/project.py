"""The project's own files: where the DAGs, the dbt project and its SQL live.

The code runs from the checkout (an editable install, or ``/app`` on ``PYTHONPATH``
in the containers), so every path is relative to it.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
DAGS_FOLDER = PROJECT_DIR / "dags"
DBT_PROJECT_DIR = PROJECT_DIR / "dbt_project"
DBT_PROJECT_FILE = DBT_PROJECT_DIR / "dbt_project.yml"
SERVING_SQL = DBT_PROJECT_DIR / "models" / "serving" / "serving_hourly_metrics.sql"
