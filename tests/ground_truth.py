"""DESIGN.md's metrics computed the slow, obvious way from what the log holds.

Independent of the pipeline's code: validity comes from the test's own reading
of the contract, and everything else is plain Python over dicts.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date

from tests.contract_oracle import expected_event, expected_reason

METRICS = ("events", "new_users", "active_users", "orders", "revenue_cents", "page_views")


def hourly_metrics(records) -> dict[tuple[date, int, str], dict[str, int]]:
    """{(event_date, hour, country): {metric: value}} for hours and countries with events."""
    valid = []
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if expected_reason(record.key, record.value, record.timestamp) is None:
            valid.append((record, expected_event(record.key, record.value)))

    # Copies of an event share its key (so its partition) and occurred_at (so its hour): an event_id
    # reused with another key or in another hour is another event.
    seen: set[tuple] = set()
    distinct = []
    for record, event in valid:
        at = event["occurred_at"]
        identity = (event["event_id"], record.partition, at.date(), at.hour)
        if identity not in seen:
            seen.add(identity)
            distinct.append((record, event))

    table: dict = defaultdict(lambda: dict.fromkeys(METRICS, 0))
    first_event: dict = {}
    first_signup: dict = {}
    for record, event in distinct:
        at = event["occurred_at"]
        cell = table[(at.date(), at.hour, event["country"])]
        cell["events"] += 1
        if event["event_type"] == "order":
            cell["orders"] += 1
            cell["revenue_cents"] += event["amount_cents"]
        if event["event_type"] == "page_view":
            cell["page_views"] += 1
        order_key = (at, record.offset)
        user_day = (at.date(), event["user_id"])
        if user_day not in first_event or order_key < first_event[user_day][0]:
            first_event[user_day] = (order_key, event)
        if event["event_type"] == "signup" and (user_day not in first_signup or order_key < first_signup[user_day][0]):
            first_signup[user_day] = (order_key, event)
    for metric, firsts in (("active_users", first_event), ("new_users", first_signup)):
        for _, event in firsts.values():
            at = event["occurred_at"]
            table[(at.date(), at.hour, event["country"])][metric] += 1
    return dict(table)
