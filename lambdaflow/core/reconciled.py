"""The verdict of a day's reconciliation, as its report (a batch document) keeps it.

The batch DAGs write the report (:mod:`lambdaflow.serving.reconcile`); the speed
layer keeps a day's state until the day has passed.
"""

from __future__ import annotations

from datetime import date

from lambdaflow.core.documents import Documents
from lambdaflow.core.files import DamagedFile
from lambdaflow.core.layout import reconcile_report_name


def passed(documents: Documents, day: date) -> bool:
    """Has ``day`` been reconciled, with every metric within the threshold? A report written before
    reports kept the verdict passes when nothing was unexplained."""
    try:
        rows = documents.read(reconcile_report_name(day))
    except DamagedFile:
        return False
    return (
        bool(rows)
        and isinstance(rows, list)
        and all(
            isinstance(row, dict)
            and row.get("within_threshold", row.get("unexplained") == 0 and not row.get("hours_unexplained"))
            for row in rows
        )
    )
