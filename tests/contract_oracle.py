"""DESIGN.md's rules table, written a second time in plain Python, one message at a time.

Slow and obvious on purpose: the tests hold the bulk contract module to it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

_OFFSET = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$")
_TYPE_NAMES = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "object"}


def _kind(value: object) -> str:
    return _TYPE_NAMES[type(value)]


def _parse_instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment


def expected_reason(key: bytes | None, value: bytes | None, timestamp_ms: int) -> str | None:
    """The reason the contract must give, or None for a valid event."""
    if value is None:
        return "tombstone"
    if len(value) > 64 * 1024:
        return "value_too_large"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    try:
        doc = json.loads(text)
    except ValueError:
        return "not_json"
    if not isinstance(doc, dict):
        return "not_an_object"
    if not doc:
        return "empty_object"

    for field in ("event_id", "event_type", "user_id"):
        if doc.get(field) is None:
            return f"missing_{field}"
        if not isinstance(doc[field], str):
            return f"{field}_is_{_kind(doc[field])}"
        if field == "event_id" and doc[field] == "":
            return "empty_event_id"
        if field == "event_type" and doc[field] not in ("signup", "login", "page_view", "order"):
            return "unknown_event_type"
        if field == "user_id" and doc[field] == "":
            return "empty_user_id"
    if key is None:
        return "missing_key"
    if key != doc["user_id"].encode("utf-8"):
        return "user_id_not_key"

    occurred_at = doc.get("occurred_at")
    if occurred_at is None:
        return "missing_occurred_at"
    if not isinstance(occurred_at, str):
        return f"occurred_at_is_{_kind(occurred_at)}"
    moment = _parse_instant(occurred_at)
    if moment is not None and moment.tzinfo is None:
        return "occurred_at_no_offset"
    if moment is None or not _OFFSET.search(occurred_at):
        return "occurred_at_unparseable"
    kafka_time = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    if moment > kafka_time + timedelta(hours=1):
        return "occurred_at_after_kafka_timestamp"

    country = doc.get("country")
    if country is not None:
        if not isinstance(country, str):
            return f"country_is_{_kind(country)}"
        if not re.fullmatch(r"[A-Z]{2}", country):
            return "bad_country"

    if doc["event_type"] == "order":
        amount = doc.get("amount_cents")
        if amount is None:
            return "missing_amount_cents"
        if not isinstance(amount, int) or isinstance(amount, bool):
            return f"amount_cents_is_{_kind(amount)}"
        if not -(2**63) <= amount < 2**63:
            return "amount_cents_out_of_range"
        if amount < 0:
            return "negative_amount_cents"
        if amount > 1_000_000_000_000:  # DESIGN.md invariant 11: a stated range that both layers sum exactly
            return "amount_cents_out_of_range"
    return None


def expected_event(key: bytes, value: bytes) -> dict:
    """The typed fields of a valid event."""
    doc = json.loads(value)
    moment = datetime.fromisoformat(doc["occurred_at"]).astimezone(UTC)
    return {
        "event_id": doc["event_id"],
        "event_type": doc["event_type"],
        "user_id": doc["user_id"],
        "occurred_at": moment,
        "event_date": moment.date(),
        "country": doc.get("country") or "ZZ",
        "amount_cents": doc["amount_cents"] if doc["event_type"] == "order" else None,
    }
