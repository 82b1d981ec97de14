"""The synthetic event generator, without Kafka."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from lambdaflow.synthetic import generator

UNTIL = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def options(**changes) -> generator.Options:
    return generator.Options(**{"days": 2, "events_per_day": 2000, "seed": 1, "until": UNTIL, **changes})


def test_same_seed_same_plan_and_another_seed_another() -> None:
    first = generator.generate(options(duplicates=0.1, out_of_order=0.1, late=0.1, malformed=0.1)).messages
    again = generator.generate(options(duplicates=0.1, out_of_order=0.1, late=0.1, malformed=0.1)).messages
    other = generator.generate(options(seed=2, duplicates=0.1, out_of_order=0.1, late=0.1, malformed=0.1)).messages
    assert first == again
    assert first != other


def test_whole_days_and_today_so_far() -> None:
    plan = generator.generate(options())
    assert plan.events_per_date == {"2026-11-25": 2000, "2026-11-26": 2000, "2026-11-27": 1000}
    instants = [datetime.fromisoformat(json.loads(m.value)["occurred_at"]) for m in plan.messages]
    assert min(instants) >= datetime(2026, 11, 25, tzinfo=UTC)
    assert max(instants) < UNTIL
    assert instants == sorted(instants)  # no disorder asked for


def test_event_ids_are_unique_and_keys_are_user_ids() -> None:
    plan = generator.generate(options())
    docs = [json.loads(m.value) for m in plan.messages]
    assert len({d["event_id"] for d in docs}) == len(docs)
    assert all(m.key == d["user_id"].encode() for m, d in zip(plan.messages, docs, strict=False))


def test_duplicates_repeat_an_earlier_message_exactly() -> None:
    plan = generator.generate(options(duplicates=0.2))
    seen: set[tuple] = set()
    for message in plan.messages:
        if message.kind == "duplicate":
            assert (message.key, message.value) in seen
        seen.add((message.key, message.value))
    assert 600 <= plan.counts["duplicates"] <= 1400


def test_every_malformed_kind_is_made() -> None:
    plan = generator.generate(options(malformed=0.2))
    kinds = Counter(m.kind for m in plan.messages if m.kind not in ("event", "duplicate"))
    assert set(kinds) == set(generator.MALFORMED_KINDS)


def test_late_events_come_after_the_others() -> None:
    plan = generator.generate(options(late=0.05))
    assert plan.late > 0
    tail_dates = {m.event_date.isoformat() for m in plan.messages[-plan.late :]}
    assert "2026-11-25" in tail_dates


@pytest.mark.parametrize("bad", [{"days": -1}, {"duplicates": 1.5}, {"malformed": -0.1}])
def test_bad_options_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        options(**bad)
