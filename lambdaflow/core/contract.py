"""The message and event contract of DESIGN.md, applied to whole batches.

A batch of Kafka records goes in as one Polars frame; a typed frame of valid
events and a frame of rejects come out. Every message lands in exactly one of
the two. The rules run as one DuckDB statement over the batch (yyjson parses
each value once), so no Python code runs per message on the hot path.

A reject carries a reason code that names the first rule the message breaks,
in the order of the rules table: ``tombstone``, ``value_too_large``,
``not_utf8``, ``not_json``, ``not_an_object``, ``empty_object``,
``missing_<field>``, ``<field>_is_<json type>``, ``empty_<field>``,
``unknown_event_type``, ``missing_key``, ``user_id_not_key``,
``occurred_at_no_offset``, ``occurred_at_unparseable``,
``occurred_at_after_kafka_timestamp``, ``bad_country``,
``negative_amount_cents``, ``amount_cents_out_of_range``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import duckdb
import polars as pl

from lambdaflow.core.event_types import EVENT_TYPES

MAX_VALUE_BYTES = 64 * 1024
DEFAULT_COUNTRY = "ZZ"
# How far occurred_at may run ahead of the message's Kafka timestamp.
MAX_CLOCK_SKEW = "1 hour"
# The largest amount_cents an order may carry (ten billion in a currency's major unit). Both layers
# sum amounts in 64 bits, so a cell of one hour and country stays exact up to 9.2 million orders of
# this amount; a larger amount goes to the dead letter instead of wrapping a sum or failing a build.
MAX_AMOUNT_CENTS = 10**12

RECORD_SCHEMA = pl.Schema(
    {
        "kafka_topic": pl.String(),
        "kafka_partition": pl.Int32(),
        "kafka_offset": pl.Int64(),
        "kafka_timestamp": pl.Datetime("ms", "UTC"),
        "key": pl.Binary(),
        "value": pl.Binary(),
    }
)

EVENT_SCHEMA = pl.Schema(
    {
        "event_id": pl.String(),
        "event_type": pl.String(),
        "user_id": pl.String(),
        "occurred_at": pl.Datetime("us", "UTC"),
        "event_date": pl.Date(),
        "country": pl.String(),
        "amount_cents": pl.Int64(),
        "kafka_topic": pl.String(),
        "kafka_partition": pl.Int32(),
        "kafka_offset": pl.Int64(),
        "kafka_timestamp": pl.Datetime("ms", "UTC"),
    }
)

REJECT_SCHEMA = pl.Schema({"reason": pl.String(), **RECORD_SCHEMA})

# ISO-8601 date and time; the offset is mandatory ("Z" or a numeric offset).
_ISO_LOCAL = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}([.,]\d{1,9})?)?"
_ISO_OFFSET = r"(Z|[+-]\d{2}(:?\d{2})?)"

_FIELDS = ("event_id", "event_type", "user_id", "occurred_at", "country", "amount_cents")

# Each field comes out of the parse as its raw JSON token (SQL NULL when absent
# or null); the token's first character tells its JSON type, and a string token
# without escapes is its own value between the quotes. That keeps it to one
# parse per message.
_MACROS = [
    r"""
    create or replace temp macro json_kind(token) as case when token is null then null else case left(token, 1)
        when '"' then 'string'
        when 't' then 'boolean'
        when 'f' then 'boolean'
        when '{' then 'object'
        when '[' then 'array'
        else case when regexp_full_match(token, '-?[0-9]+') then 'integer' else 'float' end
    end end
    """,
    r"""
    create or replace temp macro json_string(token) as case
        when left(token, 1) <> '"' then null
        when contains(token, '\') then token ->> '$'
        else token[2:-2]
    end
    """,
]

_FIELD_TYPES = ", ".join(f'"{name}": "JSON"' for name in _FIELDS)

_CLASSIFY_SQL = f"""
with decoded as (
    select
        *,
        case when octet_length(value) <= {MAX_VALUE_BYTES} then try(decode(value)) end as text,
        try(decode(key)) as key_text
    from records
),

transformed as (
    -- One parse for a valid message: json_valid parses again only a value the transform refused.
    select *, try(json_transform(text, '{{{_FIELD_TYPES}}}')) as transformed
    from decoded
),

parsed as (
    select
        * exclude (transformed),
        coalesce(transformed is not null or json_valid(text), false) as is_json,
        transformed as doc
    from transformed
),

fields as (
    select
        *,
        {", ".join(f"json_kind(doc.{name}) as {name}_kind" for name in _FIELDS)},
        {", ".join(f"json_string(doc.{name}) as {name}_text" for name in _FIELDS[:-1])}
    from parsed
),

checked as (
    select
        *,
        try_cast(occurred_at_text as timestamptz) as occurred_at_utc,
        case when amount_cents_kind = 'integer' then try_cast(doc.amount_cents as bigint) end
            as amount_cents_int
    from fields
),

classified as (
    select
        *,
        case
            when value is null then 'tombstone'
            when octet_length(value) > {MAX_VALUE_BYTES} then 'value_too_large'
            when text is null then 'not_utf8'
            when not is_json then 'not_json'
            when left(ltrim(text), 1) <> '{{' then 'not_an_object'

            -- an object without event_id: empty, or missing it (the pattern runs on these rows alone)
            when event_id_kind is null then case
                when regexp_full_match(text, '\\s*\\{{\\s*\\}}\\s*') then 'empty_object' else 'missing_event_id'
            end
            when event_id_kind <> 'string' then 'event_id_is_' || event_id_kind
            when event_id_text = '' then 'empty_event_id'

            when event_type_kind is null then 'missing_event_type'
            when event_type_kind <> 'string' then 'event_type_is_' || event_type_kind
            when event_type_text not in {EVENT_TYPES} then 'unknown_event_type'

            when user_id_kind is null then 'missing_user_id'
            when user_id_kind <> 'string' then 'user_id_is_' || user_id_kind
            when user_id_text = '' then 'empty_user_id'
            when key is null then 'missing_key'
            when key_text is distinct from user_id_text then 'user_id_not_key'

            when occurred_at_kind is null then 'missing_occurred_at'
            when occurred_at_kind <> 'string' then 'occurred_at_is_' || occurred_at_kind
            when not regexp_full_match(occurred_at_text, '{_ISO_LOCAL}{_ISO_OFFSET}') then
                case when regexp_full_match(occurred_at_text, '{_ISO_LOCAL}')
                    then 'occurred_at_no_offset' else 'occurred_at_unparseable' end
            when occurred_at_utc is null then 'occurred_at_unparseable'
            when occurred_at_utc > kafka_timestamp + interval {MAX_CLOCK_SKEW}
                then 'occurred_at_after_kafka_timestamp'

            when country_kind is null then null
            when country_kind <> 'string' then 'country_is_' || country_kind
            when not regexp_full_match(country_text, '[A-Z]{{2}}') then 'bad_country'
        end as value_reason,
        case
            when event_type_text <> 'order' then null
            when amount_cents_kind is null then 'missing_amount_cents'
            when amount_cents_kind <> 'integer' then 'amount_cents_is_' || amount_cents_kind
            when amount_cents_int is null then 'amount_cents_out_of_range'
            when amount_cents_int < 0 then 'negative_amount_cents'
            when amount_cents_int > {MAX_AMOUNT_CENTS} then 'amount_cents_out_of_range'
        end as amount_reason
    from checked
)

select
    coalesce(value_reason, amount_reason) as reason,
    event_id_text as event_id,
    event_type_text as event_type,
    user_id_text as user_id,
    occurred_at_utc as occurred_at,
    cast(occurred_at_utc as date) as event_date,
    coalesce(country_text, '{DEFAULT_COUNTRY}') as country,
    case when event_type_text = 'order' then amount_cents_int end as amount_cents,
    kafka_topic,
    kafka_partition,
    kafka_offset,
    kafka_timestamp,
    key,
    value
from classified
"""

_EVENTS_SQL = f"""
select {", ".join(EVENT_SCHEMA.names())}
from classified_batch
where reason is null
order by kafka_partition, kafka_offset
"""

_REJECTS_SQL = """
select reason, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, key, value
from classified_batch
where reason is not null
order by kafka_partition, kafka_offset
"""


@dataclass(frozen=True)
class Decoded:
    """One batch, split: every input record is in exactly one of the frames."""

    events: pl.DataFrame
    rejects: pl.DataFrame


class KafkaRecord(Protocol):
    """The fields of a consumed message the contract reads (kafka-python's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def records_frame(records: Iterable[KafkaRecord]) -> pl.DataFrame:
    """Collect consumed messages into a frame of RECORD_SCHEMA (timestamps in ms)."""
    records = list(records)
    return pl.DataFrame(
        {
            "kafka_topic": [r.topic for r in records],
            "kafka_partition": [r.partition for r in records],
            "kafka_offset": [r.offset for r in records],
            "kafka_timestamp": [r.timestamp for r in records],
            "key": [r.key for r in records],
            "value": [r.value for r in records],
        },
        schema_overrides={"kafka_timestamp": pl.Int64},
    ).cast(RECORD_SCHEMA)


class Classifier:
    """Applies the contract with its own in-memory DuckDB connection.

    A connection serves one thread at a time; use one Classifier per thread,
    or the module-level :func:`classify`, which keeps one per thread.
    """

    def __init__(self) -> None:
        self._con = duckdb.connect(config={"threads": 1})
        self._con.execute("set TimeZone = 'UTC'")
        for macro in _MACROS:
            self._con.execute(macro)

    def classify(self, records: pl.DataFrame) -> Decoded:
        records = records.select(RECORD_SCHEMA.names()).cast(RECORD_SCHEMA)
        con = self._con
        con.register("records", records)
        try:
            con.execute(f"create or replace temp table classified_batch as {_CLASSIFY_SQL}")
            events = con.sql(_EVENTS_SQL).pl().cast(EVENT_SCHEMA)
            rejects = con.sql(_REJECTS_SQL).pl().cast(REJECT_SCHEMA)
        finally:
            con.execute("drop table if exists classified_batch")
            con.unregister("records")
        return Decoded(events=events, rejects=rejects)

    def close(self) -> None:
        self._con.close()


_local = threading.local()


def classify(records: pl.DataFrame) -> Decoded:
    """Split a frame of RECORD_SCHEMA into valid events and rejects."""
    classifier = getattr(_local, "classifier", None)
    if classifier is None:
        classifier = _local.classifier = Classifier()
    return classifier.classify(records)


def reasons_by_partition(rejects: pl.DataFrame) -> dict[int, list[str]]:
    """Each partition's reject reasons, one per rejected message."""
    if not rejects.height:
        return {}
    found: dict[int, list[str]] = {}
    for partition, reason in rejects.select("kafka_partition", "reason").iter_rows():
        found.setdefault(partition, []).append(reason)
    return found
