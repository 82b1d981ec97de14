"""`/healthz`: is each component doing its job, and if not, why, in one line each.

* ``serving``: the batch manifest and the snapshots can be read and answered from.
* ``archiver`` and ``stream``: every partition has a worker that wrote its status within
  :data:`STALE_SECONDS` (both write it every second while they run).
* ``batch``: the last reconciled day is within the reconcile threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.days import today
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.layout import reconcile_report_name
from lambdaflow.serving.query import Question, answer
from lambdaflow.serving.status import LAYERS, WorkerFigures, worker_statuses

STALE_SECONDS = 30.0
"""A worker's status older than this means no worker is running for that partition."""
COMPONENTS = ("serving", *LAYERS, "batch")


@dataclass(frozen=True)
class Health:
    healthy: bool
    why: list[str]
    """One line per problem; empty when healthy."""

    def as_dict(self) -> dict:
        return {"healthy": self.healthy, "why": self.why}


def check(settings: Settings) -> dict[str, Health]:
    statuses = worker_statuses(settings)
    return {
        "serving": _serving(settings),
        **{layer: _worker(layer, statuses) for layer in LAYERS},
        "batch": _batch(settings),
    }


def _serving(settings: Settings) -> Health:
    try:
        answer(settings, Question(today(), today()))
    except (LambdaflowError, OSError) as error:
        return Health(False, [f"cannot answer: {' '.join(str(error).split())}"])
    return Health(True, [])


def _worker(layer: str, statuses: dict[int, dict[str, dict]]) -> Health:
    now = time.time()
    why = []
    for partition, documents in sorted(statuses.items()):
        document = documents[layer]
        age = WorkerFigures.of(document, now).status_age
        if age is None:
            why.append(f"partition {partition}: no {layer} worker has written its status yet")
        elif age > STALE_SECONDS:
            why.append(
                f"partition {partition}: status last written {age:.0f} s ago "
                f"by pid {document.get('pid')}: no {layer} worker is running for it"
            )
    return Health(not why, why)


def _batch(settings: Settings) -> Health:
    days = read_manifest(settings.documents).get("days", {})
    for day in sorted(days, reverse=True):
        report = settings.documents.read(reconcile_report_name(date.fromisoformat(day)))
        if not report:
            continue
        wrong = [row for row in report if row.get("within_threshold") is False]
        if wrong:
            detail = ", ".join(f"{row['metric']} by {row['unexplained']:+d}" for row in wrong)
            return Health(False, [f"{day} does not reconcile with the speed layer: {detail}"])
        return Health(True, [])
    return Health(True, [])
