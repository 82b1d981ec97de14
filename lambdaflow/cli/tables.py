"""`--format table` for people: money as money, the boundary marked, one metric per row.

JSON output stays the contract (exact integers, every field); these tables only change how the
same answers read on a terminal.
"""

from __future__ import annotations

from datetime import datetime

from lambdaflow.core import metrics


def money(cents: int | None) -> str:
    return "" if cents is None else f"{cents / 100:,.2f}"


def query_rows(rows: list[dict], boundary: str | None) -> tuple[list[dict], set[int], str]:
    """The rows with money metrics in units (``revenue_cents`` as ``revenue``), the row indexes after
    which the boundary falls (a line is drawn there), and a caption that says where it is."""
    money_names = {m.name for m in metrics.defined() if m.money}
    shown, lines = [], set()
    start = datetime.fromisoformat(boundary).replace(tzinfo=None) if boundary else None
    for index, row in enumerate(rows):
        shown.append(
            {
                (key.removesuffix("_cents") if key in money_names else key): (
                    money(value) if key in money_names else value
                )
                for key, value in row.items()
            }
        )
        if start is not None and index + 1 < len(rows) and _before(row, start) and not _before(rows[index + 1], start):
            lines.add(index)
    if start is None:
        caption = "no day built yet: every row is realtime"
    else:
        caption = f"boundary {start:%Y-%m-%d %H:%M} UTC: hours before it from the batch layer, from it on realtime"
    return shown, lines, caption


def _before(row: dict, boundary: datetime) -> bool:
    """Does the row's hour (or day) start before the boundary?"""
    start = datetime.fromisoformat(row["event_date"]).replace(hour=row.get("hour") or 0)
    return start < boundary


RECONCILE_COLUMNS = {
    "metric": "metric",
    "batch": "batch",
    "speed": "speed",
    "difference": "speed − batch",
    "explained_by_late_events": "late events",
    "explained_by_speed_lag": "speed lag",
    "unexplained": "unexplained",
    "hours_unexplained": "hours unexplained",
    "within_threshold": "ok",
}


AMOUNTS = ("batch", "speed", "difference", "explained_by_late_events", "explained_by_speed_lag", "unexplained")


def reconcile_rows(rows: list[dict]) -> tuple[list[dict], str]:
    """One row per metric with the columns a person compares, and the day's facts as a caption."""
    money_names = {m.name for m in metrics.defined() if m.money}
    shown = []
    for row in rows:
        money_row = row["metric"] in money_names
        cells = {}
        for key, header in RECONCILE_COLUMNS.items():
            value = row.get(key)
            if money_row and key in AMOUNTS:
                value = money(value)
            elif key == "hours_unexplained":
                value = ", ".join(map(str, value[:8])) + (" …" if len(value) > 8 else "") if value else ""
            elif key == "within_threshold":
                value = "yes" if value is not False else "NO"
            cells[header] = value
        shown.append(cells)
    first = rows[0] if rows else {}
    caption = (
        f"{first.get('event_date')}: built {first.get('built_at')}, reconciled {first.get('reconciled_at')}; "
        f"{first.get('late_events', 0)} late events in {first.get('late_files', 0)} late files"
    )
    if first.get("note"):
        caption += f"; {first['note']}"
    return shown, caption
