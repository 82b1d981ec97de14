"""The event contract of DESIGN.md, on frames built in memory (no Kafka)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import polars as pl
import pytest

from lambdaflow.core.contract import EVENT_SCHEMA, REJECT_SCHEMA, classify
from tests.contract_oracle import expected_reason

KAFKA_TIME = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
KAFKA_MS = int(KAFKA_TIME.timestamp() * 1000)

VALID = {
    "event_id": "e-1",
    "event_type": "order",
    "user_id": "u-1",
    "occurred_at": "2026-11-27T10:00:00Z",
    "country": "DE",
    "amount_cents": 1250,
}


def records(*messages: tuple[bytes | None, bytes | None], timestamp_ms: int = KAFKA_MS) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "kafka_topic": ["events"] * len(messages),
            "kafka_partition": [1] * len(messages),
            "kafka_offset": list(range(100, 100 + len(messages))),
            "kafka_timestamp": [timestamp_ms] * len(messages),
            "key": [key for key, _ in messages],
            "value": [value for _, value in messages],
        },
        schema_overrides={"key": pl.Binary, "value": pl.Binary, "kafka_timestamp": pl.Int64},
    )


DROP = object()


def event(**changes: object) -> tuple[bytes, bytes]:
    """A valid order with some fields changed (or dropped), keyed by its user_id."""
    doc = {k: v for k, v in {**VALID, **changes}.items() if v is not DROP}
    return str(doc["user_id"]).encode(), json.dumps(doc).encode()


BAD_INPUTS = {
    "not JSON": ((b"u-1", b'{"event_id": '), "not_json"),
    "not UTF-8": ((b"u-1", b'{"event_id": "\xff"}'), "not_utf8"),
    "a JSON array": ((b"u-1", b'[{"event_id": "e-1"}]'), "not_an_object"),
    "empty object": ((b"u-1", b"{}"), "empty_object"),
    "missing field": (event(event_id=DROP), "missing_event_id"),
    "event_id as a number": (event(event_id=7), "event_id_is_integer"),
    "amount_cents as a string": (event(amount_cents="1250"), "amount_cents_is_string"),
    "amount_cents as a float": (event(amount_cents=12.5), "amount_cents_is_float"),
    "amount_cents as a boolean": (event(amount_cents=True), "amount_cents_is_boolean"),
    "unknown event_type": (event(event_type="logout"), "unknown_event_type"),
    "negative amount": (event(amount_cents=-1), "negative_amount_cents"),
    "amount above the largest": (event(amount_cents=10**12 + 1), "amount_cents_out_of_range"),
    "missing amount on an order": (event(amount_cents=DROP), "missing_amount_cents"),
    "empty user_id": (event(user_id=""), "empty_user_id"),
    "key different from user_id": ((b"u-2", event()[1]), "user_id_not_key"),
    "missing key": ((None, event()[1]), "missing_key"),
    "occurred_at without offset": (event(occurred_at="2026-11-27T10:00:00"), "occurred_at_no_offset"),
    "occurred_at unparseable": (event(occurred_at="2026-13-45T10:00:00Z"), "occurred_at_unparseable"),
    "occurred_at over an hour after the Kafka timestamp": (
        event(occurred_at="2026-11-27T13:00:00.001Z"),
        "occurred_at_after_kafka_timestamp",
    ),
    "bad country code": (event(country="de"), "bad_country"),
    "tombstone": ((b"u-1", None), "tombstone"),
    "value over 64 KiB": (event(padding="x" * 65536), "value_too_large"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_rejected_with_its_reason(case: str) -> None:
    message, reason = BAD_INPUTS[case]
    decoded = classify(records(message))
    assert decoded.events.height == 0
    assert decoded.rejects["reason"].to_list() == [reason]
    assert expected_reason(*message, KAFKA_MS) == reason  # the oracle agrees


@pytest.mark.parametrize("amount", [10**12 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1])
def test_an_amount_no_64_bit_sum_holds_exactly_is_out_of_range(amount: int) -> None:
    """Two orders of 2**63 - 1 would wrap a 64-bit sum: an order above 10**12 is refused instead."""
    message = event(amount_cents=amount)
    assert classify(records(message)).rejects["reason"].to_list() == ["amount_cents_out_of_range"]
    assert expected_reason(*message, KAFKA_MS) == "amount_cents_out_of_range"


def test_every_bad_input_has_a_distinct_reason() -> None:
    reasons = [reason for _, reason in BAD_INPUTS.values()]
    assert len(set(reasons)) == len(reasons)


def test_reject_keeps_the_original_bytes_and_position() -> None:
    bad = (b"u-1", b'{"event_id": "\xff\xfe"}')
    rejects = classify(records(event(), bad, event(event_id="e-2"))).rejects
    assert rejects.schema == REJECT_SCHEMA
    assert rejects.row(0, named=True) == {
        "reason": "not_utf8",
        "kafka_topic": "events",
        "kafka_partition": 1,
        "kafka_offset": 101,
        "kafka_timestamp": KAFKA_TIME,
        "key": b"u-1",
        "value": b'{"event_id": "\xff\xfe"}',
    }


def test_extra_fields_and_null_or_absent_country_are_accepted() -> None:
    decoded = classify(
        records(
            event(country=None, referrer="newsletter", nested={"a": [1, 2]}),
            event(event_id="e-2", country=DROP),
        )
    )
    assert decoded.rejects.height == 0
    assert decoded.events["country"].to_list() == ["ZZ", "ZZ"]


def test_valid_event_is_typed_and_converted_to_utc() -> None:
    decoded = classify(records(event(occurred_at="2026-11-27T10:00:00+05:30")))
    assert decoded.events.schema == EVENT_SCHEMA
    row = decoded.events.row(0, named=True)
    assert row["occurred_at"] == datetime(2026, 11, 27, 4, 30, tzinfo=UTC)
    assert row["amount_cents"] == 1250
    assert row["kafka_offset"] == 100


@pytest.mark.parametrize(
    ("occurred_at", "utc_date"),
    [
        ("2026-11-27T01:30:00+05:30", date(2026, 11, 26)),  # local date is the 27th
        ("2026-11-26T23:30:00-08:00", date(2026, 11, 27)),  # local date is the 26th
        ("2026-11-26T23:59:59.999999Z", date(2026, 11, 26)),
        ("2026-11-27T00:00:00+00:00", date(2026, 11, 27)),
        ("2026-11-26T20:15:00-0945", date(2026, 11, 27)),
    ],
)
def test_the_utc_date_decides_the_day(occurred_at: str, utc_date: date) -> None:
    events = classify(records(event(occurred_at=occurred_at))).events
    assert events["event_date"].to_list() == [utc_date]


def test_amount_is_ignored_on_other_event_types() -> None:
    decoded = classify(
        records(
            event(event_type="login", amount_cents="not a number"),
            event(event_id="e-2", event_type="page_view", amount_cents=-5),
        )
    )
    assert decoded.rejects.height == 0
    assert decoded.events["amount_cents"].to_list() == [None, None]


def test_limits_are_inclusive() -> None:
    body = json.dumps({**VALID, "occurred_at": "2026-11-27T13:00:00Z"})
    padding = 64 * 1024 - len(body) - len(', "p": ""')
    exactly_64_kib = body[:-1] + ', "p": "' + "x" * padding + '"}'
    assert len(exactly_64_kib.encode()) == 64 * 1024
    decoded = classify(
        records(
            (b"u-1", exactly_64_kib.encode()),  # also exactly one hour after the Kafka timestamp
            event(event_id="e-2", amount_cents=0),
            event(event_id="e-3", amount_cents=10**12),
        )
    )
    assert decoded.rejects.height == 0
    assert decoded.events.height == 3


def test_every_record_lands_in_exactly_one_frame() -> None:
    messages = [message for message, _ in BAD_INPUTS.values()] + [event(event_id=f"e-{i}") for i in range(10)]
    decoded = classify(records(*messages))
    offsets = decoded.events["kafka_offset"].to_list() + decoded.rejects["kafka_offset"].to_list()
    assert sorted(offsets) == list(range(100, 100 + len(messages)))
    assert decoded.events.height == 10


def test_empty_batch_gives_empty_typed_frames() -> None:
    decoded = classify(records())
    assert decoded.events.schema == EVENT_SCHEMA and decoded.events.height == 0
    assert decoded.rejects.schema == REJECT_SCHEMA and decoded.rejects.height == 0


def test_escaped_strings_are_unescaped() -> None:
    value = (
        b'{"event_id": "e\\u00e9\\"1", "event_type": "login", "user_id": "u\\/1", '
        b'"occurred_at": "2026-11-27T10:00:00Z"}'
    )
    events = classify(records((b"u/1", value))).events
    assert events.select("event_id", "user_id").row(0) == ('e\u00e9"1', "u/1")
