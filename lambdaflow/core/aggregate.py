"""The metrics of the definition (lambdaflow/core/metrics.py) as Polars transforms over valid events.

Every metric is additive per UTC hour and country. Count and sum metrics add
up directly. A users metric attributes each user-day to one event, the user's
first event of that UTC day among the metric's event types, "first" ordered
by occurred_at, then offset; a user's events share a partition, so offsets
order them. Its rows carry the metric's name as their ``kind``.
"""

from __future__ import annotations

import polars as pl

from lambdaflow.core import metrics as metric_definitions
from lambdaflow.core.metrics import Metric

FIRST_SEEN_SCHEMA = pl.Schema(
    {
        "event_date": pl.Date(),
        "user_id": pl.String(),
        "kind": pl.String(),
        "occurred_at": pl.Datetime("us", "UTC"),
        "kafka_offset": pl.Int64(),
        "event_hour": pl.Datetime("us"),
        "country": pl.String(),
    }
)


def counted(metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
    """The metrics that add up over events (count and sum)."""
    return tuple(m for m in metrics if not m.counts_users)


def hourly_schema(metrics: tuple[Metric, ...]) -> pl.Schema:
    return pl.Schema(
        {"event_hour": pl.Datetime("us"), "country": pl.String(), **{m.name: pl.Int64() for m in counted(metrics)}}
    )


def with_event_hour(events: pl.DataFrame) -> pl.DataFrame:
    """Adds the UTC hour (a naive UTC timestamp) each event belongs to."""
    return events.with_columns(
        pl.col("occurred_at")
        .dt.convert_time_zone("UTC")
        .dt.replace_time_zone(None)
        .dt.truncate("1h")
        .alias("event_hour")
    )


def first_copies(events: pl.DataFrame) -> pl.DataFrame:
    """One row per event: the copy first by (partition, offset). Copies of an event share its key (so
    its partition) and its occurred_at (so its hour); an event_id reused with another key or in another
    hour is another event, as the dedupe per partition and hour would count it. Needs ``event_hour``."""
    return events.sort("kafka_partition", "kafka_offset").unique(
        ["event_id", "kafka_partition", "event_hour"], keep="first", maintain_order=True
    )


def hourly_counts(events: pl.DataFrame, metrics: tuple[Metric, ...] | None = None) -> pl.DataFrame:
    """The count and sum metrics per UTC hour and country, over distinct events."""
    metrics = metrics or metric_definitions.defined()
    schema = hourly_schema(metrics)
    return (
        with_event_hour(events)
        .group_by("event_hour", "country")
        .agg(m.hourly_expression() for m in counted(metrics))
        .select(schema.names())
        .cast(schema)
    )


def first_seen(events: pl.DataFrame, metrics: tuple[Metric, ...] | None = None) -> pl.DataFrame:
    """Per users metric, UTC day and user, the event that is first by (occurred_at, offset)."""
    metrics = metrics or metric_definitions.defined()
    events = with_event_hour(events).with_columns(pl.col("occurred_at").dt.date().alias("event_date"))
    frames = [
        events.filter(metric.selects())
        .sort("occurred_at", "kafka_offset")
        .unique(["event_date", "user_id"], keep="first", maintain_order=True)
        .with_columns(pl.lit(metric.name).alias("kind"))
        .select(FIRST_SEEN_SCHEMA.names())
        for metric in metrics
        if metric.counts_users
    ]
    return pl.concat(frames).cast(FIRST_SEEN_SCHEMA) if frames else FIRST_SEEN_SCHEMA.to_frame()


def hourly_metrics(events: pl.DataFrame, metrics: tuple[Metric, ...] | None = None) -> pl.DataFrame:
    """Every metric per UTC hour and country from a whole set of valid events (copies included).

    What the speed layer's state holds after counting these events, computed in
    one pass: used to explain differences between the layers.
    """
    metrics = metrics or metric_definitions.defined()
    distinct = first_copies(with_event_hour(events))
    keys = ["event_hour", "country"]
    table = hourly_counts(distinct, metrics)
    users = first_seen(distinct, metrics)
    for metric in metrics:
        if metric.counts_users:
            counted_users = (
                users.filter(pl.col("kind") == metric.name)
                .group_by(keys)
                .agg(pl.len().cast(pl.Int64).alias(metric.name))
            )
            table = table.join(counted_users, on=keys, how="full", coalesce=True)
    return (
        table.with_columns(pl.col(m.name).fill_null(0) for m in metrics)
        .with_columns(
            pl.col("event_hour").dt.date().alias("event_date"),
            pl.col("event_hour").dt.hour().cast(pl.Int32).alias("hour"),
        )
        .select("event_date", "hour", "country", *(m.name for m in metrics))
    )
