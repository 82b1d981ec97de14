"""100k synthetic messages through the real broker, consumed back and classified."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import polars as pl

from lambdaflow.core.contract import classify, records_frame
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.contract_oracle import expected_event, expected_reason
from tests.kafka_helpers import read_all


def _midnight_today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def test_100k_messages_are_classified_as_an_independent_reading_expects(kafka_bootstrap: str, topic: str) -> None:
    options = generator.Options(
        days=3,
        events_per_day=34_000,
        seed=11,
        until=_midnight_today(),
        duplicates=0.05,
        out_of_order=0.05,
        late=0.01,
        malformed=0.02,
    )
    summary = produce(kafka_bootstrap, topic, 3, options)
    assert summary.messages >= 100_000
    assert summary.duplicates > 0 and summary.malformed > 0

    consumed = read_all(kafka_bootstrap, topic, summary.messages)
    assert len(consumed) == summary.messages
    decoded = classify(records_frame(consumed))

    expected = {(r.partition, r.offset): expected_reason(r.key, r.value, r.timestamp) for r in consumed}
    got = {
        (row["kafka_partition"], row["kafka_offset"]): row["reason"]
        for row in decoded.rejects.select("kafka_partition", "kafka_offset", "reason").iter_rows(named=True)
    }
    got.update({key: None for key in decoded.events.select("kafka_partition", "kafka_offset").iter_rows()})
    assert got == expected

    # The producer's own labels agree: every malformed kind is rejected as itself.
    sent_kinds = Counter(m.kind for m in generator.generate(options).messages)
    rejected = Counter(decoded.rejects["reason"].to_list())
    assert rejected == Counter({k: n for k, n in sent_kinds.items() if k not in ("event", "duplicate")})
    assert decoded.events.height == sent_kinds["event"] + sent_kinds["duplicate"]

    # Field by field, on a sample of valid events.
    by_position = {(r.partition, r.offset): r for r in consumed}
    sample = decoded.events.sample(2_000, seed=1)
    for row in sample.iter_rows(named=True):
        record = by_position[(row["kafka_partition"], row["kafka_offset"])]
        want = expected_event(record.key, record.value)
        assert {k: row[k] for k in want} == want
        assert row["kafka_topic"] == topic


def test_duplicates_share_key_and_partition(kafka_bootstrap: str, topic: str) -> None:
    options = generator.Options(days=1, events_per_day=20_000, seed=3, until=_midnight_today(), duplicates=0.2)
    summary = produce(kafka_bootstrap, topic, 3, options)
    events = classify(records_frame(read_all(kafka_bootstrap, topic, summary.messages))).events
    copies = events.group_by("event_id").agg(
        pl.len().alias("copies"), pl.col("kafka_partition").n_unique().alias("partitions")
    )
    assert copies.filter(pl.col("copies") > 1).height == summary.duplicates
    assert copies["partitions"].max() == 1
