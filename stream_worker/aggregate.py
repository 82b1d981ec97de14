"""The metrics of DESIGN.md as pure Polars transforms over a batch of valid events.

Every metric is additive per UTC hour and country. Counts over events add up
directly. The two user metrics attribute each user-day to one event, the
user's first event (``active``) or first signup (``signup``) of that UTC day,
"first" ordered by occurred_at, then offset; a user's events share a
partition, so offsets order them.
"""

from __future__ import annotations

import polars as pl

USER_KINDS = {"active": None, "signup": "signup"}  # kind -> the event type it counts (None: any)

HOURLY_SCHEMA = pl.Schema(
    {
        "event_hour": pl.Datetime("us"),
        "country": pl.String,
        "events": pl.Int64,
        "orders": pl.Int64,
        "revenue_cents": pl.Int64,
    }
)

FIRST_SEEN_SCHEMA = pl.Schema(
    {
        "event_date": pl.Date,
        "user_id": pl.String,
        "kind": pl.String,
        "occurred_at": pl.Datetime("us", "UTC"),
        "kafka_offset": pl.Int64,
        "event_hour": pl.Datetime("us"),
        "country": pl.String,
    }
)


def with_event_hour(events: pl.DataFrame) -> pl.DataFrame:
    """Adds the UTC hour (a naive UTC timestamp) each event belongs to."""
    return events.with_columns(
        pl.col("occurred_at").dt.convert_time_zone("UTC").dt.replace_time_zone(None).dt.truncate("1h")
        .alias("event_hour")
    )


def first_copies(events: pl.DataFrame) -> pl.DataFrame:
    """One row per event_id: the copy first by (partition, offset)."""
    return events.sort("kafka_partition", "kafka_offset").unique("event_id", keep="first", maintain_order=True)


def hourly_counts(events: pl.DataFrame) -> pl.DataFrame:
    """events, orders and revenue_cents per UTC hour and country, over distinct events."""
    is_order = pl.col("event_type") == "order"
    return (
        with_event_hour(events)
        .group_by("event_hour", "country")
        .agg(
            pl.len().cast(pl.Int64).alias("events"),
            is_order.sum().cast(pl.Int64).alias("orders"),
            pl.when(is_order).then(pl.col("amount_cents")).otherwise(0).sum().cast(pl.Int64).alias("revenue_cents"),
        )
        .select(HOURLY_SCHEMA.names())
        .cast(HOURLY_SCHEMA)
    )


def first_seen(events: pl.DataFrame) -> pl.DataFrame:
    """Per UTC day, user and kind, the event that is first by (occurred_at, offset)."""
    events = with_event_hour(events).with_columns(pl.col("occurred_at").dt.date().alias("event_date"))
    frames = []
    for kind, event_type in USER_KINDS.items():
        candidates = events if event_type is None else events.filter(pl.col("event_type") == event_type)
        frames.append(
            candidates.sort("occurred_at", "kafka_offset")
            .unique(["event_date", "user_id"], keep="first", maintain_order=True)
            .with_columns(pl.lit(kind).alias("kind"))
            .select(FIRST_SEEN_SCHEMA.names())
        )
    return pl.concat(frames).cast(FIRST_SEEN_SCHEMA)
