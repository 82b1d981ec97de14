"""The metric transforms, on hand-made events (no Kafka, no state)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from lambdaflow.core import aggregate
from lambdaflow.core.contract import EVENT_SCHEMA


def events(*rows: tuple) -> pl.DataFrame:
    """rows of (event_id, event_type, user_id, occurred_at ISO, country, amount_cents, offset)."""
    return pl.DataFrame(
        [
            {
                "event_id": event_id,
                "event_type": event_type,
                "user_id": user_id,
                "occurred_at": datetime.fromisoformat(at).astimezone(UTC),
                "event_date": datetime.fromisoformat(at).astimezone(UTC).date(),
                "country": country,
                "amount_cents": amount,
                "kafka_topic": "events",
                "kafka_partition": 0,
                "kafka_offset": offset,
                "kafka_timestamp": datetime(2026, 11, 27, tzinfo=UTC),
            }
            for event_id, event_type, user_id, at, country, amount, offset in rows
        ],
        schema=EVENT_SCHEMA,
    )


def by_hour(frame: pl.DataFrame, *columns: str) -> list[tuple]:
    return sorted(frame.select(pl.col("event_hour").dt.strftime("%d %H:%M"), *columns).rows())


def test_the_first_copy_by_offset_wins() -> None:
    batch = events(
        ("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 7),
        ("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 3),
        ("e2", "login", "u1", "2026-11-26T10:05:00Z", "DE", None, 5),
    )
    assert sorted(
        aggregate.first_copies(aggregate.with_event_hour(batch)).select("event_id", "kafka_offset").rows()
    ) == [("e1", 3), ("e2", 5)]


def test_hourly_counts_sum_orders_revenue_and_page_views() -> None:
    batch = events(
        ("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 1),
        ("e2", "order", "u2", "2026-11-26T10:59:59Z", "DE", 250, 2),
        ("e3", "login", "u3", "2026-11-26T11:00:00Z", "DE", None, 3),
        ("e4", "page_view", "u1", "2026-11-26T10:30:00Z", "US", None, 4),
    )
    counts = aggregate.hourly_counts(batch)
    assert by_hour(counts, "country", "events", "orders", "revenue_cents", "page_views") == [
        ("26 10:00", "DE", 2, 2, 750, 0),
        ("26 10:00", "US", 1, 0, 0, 1),
        ("26 11:00", "DE", 1, 0, 0, 0),
    ]


def test_a_user_active_across_midnight_counts_once_on_each_day() -> None:
    batch = events(
        ("e1", "login", "u1", "2026-11-26T23:50:00Z", "DE", None, 1),
        ("e2", "page_view", "u1", "2026-11-27T00:10:00Z", "DE", None, 2),
        ("e3", "page_view", "u1", "2026-11-27T00:20:00Z", "DE", None, 3),
    )
    active = aggregate.first_seen(batch).filter(pl.col("kind") == "active_users")
    assert by_hour(active, "user_id", "country") == [("26 23:00", "u1", "DE"), ("27 00:00", "u1", "DE")]


def test_a_signup_at_ten_in_india_belongs_to_four_thirty_utc() -> None:
    signups = aggregate.first_seen(events(("e1", "signup", "u1", "2026-11-26T10:00:00+05:30", "IN", None, 1)))
    assert by_hour(signups.filter(pl.col("kind") == "new_users"), "user_id") == [("26 04:00", "u1")]


def test_a_user_seen_first_in_germany_counts_in_germany() -> None:
    batch = events(
        ("e2", "signup", "u1", "2026-11-26T12:00:00Z", "US", None, 1),  # arrives first, happened later
        ("e1", "signup", "u1", "2026-11-26T09:00:00Z", "DE", None, 2),
    )
    first = aggregate.first_seen(batch)
    assert sorted(first.select("kind", "country", "kafka_offset").rows()) == [
        ("active_users", "DE", 2),
        ("new_users", "DE", 2),
    ]


def test_ties_on_occurred_at_go_to_the_lower_offset() -> None:
    batch = events(
        ("e1", "login", "u1", "2026-11-26T09:00:00Z", "US", None, 9),
        ("e2", "login", "u1", "2026-11-26T09:00:00Z", "DE", None, 4),
    )
    assert aggregate.first_seen(batch).filter(pl.col("kind") == "active_users")["country"].to_list() == ["DE"]
