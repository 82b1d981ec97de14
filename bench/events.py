"""Synthetic events in bulk, for the benchmark only.

`lambdaflow.synthetic.generator` draws one event at a time in Python, which is right
for demos and tests but would make the producer, not the pipeline, the thing
measured. Here DuckDB draws millions of events in one statement. The draws are
hashes of the row number and a seed, so the same seed gives the same events
whatever the thread count. The shape follows `synthetic`: a skewed user
population of a quarter of the events, the same event-type and country
weights, each user living in one partition (as the key = user_id rule makes
them) and, for orders, an amount in cents.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

from lambdaflow.core.files import replace_json
from lambdaflow.core.raw_store import RawStore
from lambdaflow.core.raw_tables import DEAD_LETTER_SCHEMA, EVENTS_SCHEMA, RawTables, ResumePoint
from lambdaflow.core.storage import Storage

TOPIC = "events"
# About the size of a Kafka message the archiver's 64 MB roll counts (values only).
ROWS_PER_RAW_FILE = 330_000


def _draws_sql(
    count: int, seed: int, start: datetime, span_seconds: float, partitions: int, user_prefix: str = "user-"
) -> str:
    """One row per event, in time order: its fields, its index ``i`` and its partition; user ids start
    with ``user_prefix``."""
    users = max(20, count // 4)
    start_literal = start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"""
    with draws as (
        select
            i,
            (hash(i, {seed}, 1) % 1000000) / 1000000.0 as u_user,
            (hash(i, {seed}, 2) % 1000000) / 1000000.0 as u_type,
            hash(i, {seed}, 3) % 24902 + 99 as amount
        from range({count}) as t(i)
    ),

    picked as (
        select
            i,
            cast(floor({users} * u_user * u_user) as bigint) as user_index,
            case
                when u_type < 0.05 then 'signup'
                when u_type < 0.25 then 'login'
                when u_type < 0.85 then 'page_view'
                else 'order'
            end as event_type,
            amount
        from draws
    ),

    events as (
        select
            i,
            'bench-{seed}-' || lpad(cast(i as varchar), 10, '0') as event_id,
            event_type,
            '{user_prefix}' || lpad(cast(user_index as varchar), 7, '0') as user_id,
            cast(timestamptz '{start_literal}+00' + to_microseconds(
                cast(i * {span_seconds * 1e6 / max(count, 1)} as bigint)) as timestamptz) as occurred_at,
            case (hash(user_index, {seed}, 4) % 100)
                when 0 then null
                else ['US', 'US', 'US', 'US', 'US', 'US', 'DE', 'DE', 'DE', 'IN', 'IN', 'IN', 'BR', 'BR',
                      'GB', 'GB', 'JP', 'FR', 'ZZ', 'US'][cast(hash(user_index, {seed}, 5) % 20 as integer) + 1]
            end as country,
            case when event_type = 'order' then cast(amount as bigint) end as amount_cents,
            cast(user_index % {partitions} as integer) as kafka_partition
        from picked
    )

    select * from events
    """


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    return con


@dataclass(frozen=True)
class KafkaBatch:
    """Messages ready for a producer: keys, values and the partition each key hashes to."""

    keys: list[bytes]
    values: list[bytes]
    partitions: list[int]

    @property
    def value_bytes(self) -> int:
        return sum(len(v) for v in self.values)


def kafka_messages(
    count: int, seed: int, end: datetime, span: timedelta, partitions: int, user_prefix: str = "user-"
) -> KafkaBatch:
    """``count`` valid events spread evenly over ``span`` before ``end``, as JSON messages.

    The partition is Kafka's default (murmur2 of the key), computed once per
    user, so the producer need not hash every message in Python.
    """
    from kafka.partitioner.default import murmur2

    start = end - span
    sql = f"""
    select
        user_id,
        '{{"event_id":"' || event_id || '","event_type":"' || event_type || '","user_id":"' || user_id
        || '","occurred_at":"' || strftime(occurred_at, '%Y-%m-%dT%H:%M:%S.%g') || 'Z"'
        || case when country is null then '' else ',"country":"' || country || '"' end
        || case when amount_cents is null then '' else ',"amount_cents":' || amount_cents end
        || '}}' as value
    from ({_draws_sql(count, seed, start, span.total_seconds(), partitions, user_prefix)})
    order by i
    """
    with _connect() as con:
        rows = con.sql(sql).fetchall()
    cache: dict[str, int] = {}
    keys, values, chosen = [], [], []
    for user_id, value in rows:
        partition = cache.get(user_id)
        if partition is None:
            partition = cache[user_id] = (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions
        keys.append(user_id.encode())
        values.append(value.encode())
        chosen.append(partition)
    return KafkaBatch(keys, values, chosen)


@dataclass
class RawDay:
    day: date
    events: int
    files: int
    bytes: int


def write_raw_day(
    data_dir: Path,
    day: date,
    count: int,
    seed: int,
    partitions: int = 3,
    first_offsets: dict[int, int] | None = None,
    topic: str = TOPIC,
) -> RawDay:
    """One UTC day of ``count`` events in the raw store's layout, as the archiver would publish it.

    Committed to the raw tables as the archiver commits them, each commit about
    ROWS_PER_RAW_FILE rows of one partition (a 64 MB roll of ~200-byte messages). An
    event's offset is its index in one sequence shared by the partitions, so a
    partition's offsets rise but have gaps: nothing downstream needs them
    contiguous, and numbering them densely would cost a sort. Offsets continue
    from ``first_offsets`` (updated in place), so several days follow each other.
    Call :func:`write_manifests` afterwards for the archivers' status files.
    """
    first_offsets = first_offsets if first_offsets is not None else {}
    tables = RawTables(Storage.from_env({}, data_dir), topic)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    files = 0
    base = min(first_offsets.values(), default=0)
    span = ROWS_PER_RAW_FILE * partitions
    with _connect() as con:
        con.execute(f"create temp table day_events as {_draws_sql(count, seed, start, 86_400, partitions)}")
        for partition in range(partitions):
            since = ResumePoint(0, first_offsets.get(partition, 0))
            for chunk_start in range(0, count, span):
                chunk_end = min(count, chunk_start + span) - 1
                events = con.sql(f"""
                    select
                        event_id, event_type, user_id, occurred_at, cast(occurred_at as date) as event_date,
                        coalesce(country, 'ZZ') as country, amount_cents,
                        '{topic}' as kafka_topic, kafka_partition,
                        i + {base} as kafka_offset,
                        occurred_at as kafka_timestamp,
                        timestamptz '{start:%Y-%m-%d} 00:00:00+00' + interval 1 day as ingested_at
                    from day_events
                    where kafka_partition = {partition} and i between {chunk_start} and {chunk_end}
                    order by i
                """).pl()
                until = ResumePoint(0, base + chunk_end + 1)
                tables.begin(partition, since).commit(
                    until, events.cast(EVENTS_SCHEMA), pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
                )
                since = until
                files += 1
    for partition in range(partitions):
        first_offsets[partition] = base + count
    written = sum(each.size_bytes for each in tables.snapshot().file_ranges([day]).get(day, []))
    return RawDay(day, count, files, written)


def write_manifests(
    data_dir: Path,
    next_offsets: dict[int, int],
    partitions: int = 3,
    topic: str = TOPIC,
    caught_up_at: datetime | None = None,
) -> None:
    """The archiver's status files (every past day complete); where each partition resumes is in the
    tables' own commits."""
    store = RawStore(data_dir, topic, Storage.from_env({}, data_dir))
    caught_up = (caught_up_at or datetime.now(UTC)).isoformat(timespec="milliseconds")
    for partition in range(partitions):
        offset = next_offsets.get(partition, 0)
        replace_json(
            store.status_path(partition),
            {
                "topic": topic,
                "partition": partition,
                "epoch": 0,
                "next_offset": offset,
                "published_offset": offset - 1,
                "end_offset": offset,
                "watermark": None,
                "caught_up_at": caught_up,
                "updated_at": caught_up,
                "pid": None,
            },
        )
