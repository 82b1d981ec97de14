"""The dbt project documents what it builds: each metric column of the marts and the serving model is
declared in yml with the definition's description (so the docs site shows it), the project has its
overview, and nothing dbt generates is committed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from lambdaflow.core import metrics
from lambdaflow.core.project import DBT_PROJECT_DIR

MODELS = {
    "fct_hourly_metrics": "marts/fct_hourly_metrics.yml",
    "fct_daily_metrics": "marts/fct_daily_metrics.yml",
    "serving_hourly_metrics": "serving/serving_hourly_metrics.yml",
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_metric_column_is_declared_with_the_definitions_description(model: str) -> None:
    document = yaml.safe_load((DBT_PROJECT_DIR / "models" / MODELS[model]).read_text())
    (entry,) = [m for m in document["models"] if m["name"] == model]
    declared = {column["name"]: column.get("description", "").strip() for column in entry["columns"]}
    defined = {metric.name: metric.description for metric in metrics.defined()}
    assert {name: declared.get(name) for name in defined} == defined


def test_the_docs_site_has_an_overview_and_the_project_a_readme() -> None:
    overview = (DBT_PROJECT_DIR / "models" / "overview.md").read_text()
    assert overview.startswith("{% docs __overview__ %}") and overview.rstrip().endswith("{% enddocs %}")
    for model in MODELS:
        assert model in overview
    assert (DBT_PROJECT_DIR / "README.md").is_file()


def test_nothing_dbt_generates_is_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "dbt_project"], cwd=DBT_PROJECT_DIR.parent, capture_output=True, text=True, check=True
    ).stdout.split()
    generated = [p for p in tracked if Path(p).parts[1] in ("target", "logs", "dbt_packages", ".user.yml")]
    assert tracked and generated == []
