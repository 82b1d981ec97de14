"""`lambdaflow archive --verify`: does the raw store hold exactly the log's valid messages?

Per partition, for the log epoch the archiver is in: the log is read from its
start up to the manifest's resume offset (what the archiver says it has
landed) and classified with the contract; every valid message must be in the
raw store exactly once, as the same event, and every rejected one in the dead
letter exactly once; nothing else may be there. What the log holds beyond the
resume offset is reported as pending, not as missing.
"""

from __future__ import annotations

import logging
from collections import Counter

from kafka import TopicPartition

from lambdaflow.core.contract import classify, records_frame
from lambdaflow.core.raw_store import Manifest, RawStore
from lambdaflow.core.raw_tables import RawSnapshot
from lambdaflow.kafka import clients

log = logging.getLogger(__name__)

MAX_LISTED = 10


def verify(bootstrap: str, store: RawStore) -> list[dict]:
    """One report per archived partition; ``ok`` is False wherever the two differ."""
    snapshot = store.snapshot()
    manifests = store.manifests(snapshot)
    consumer = clients.consumer(bootstrap, None)
    try:
        return [_verify_partition(consumer, store, snapshot, m) for _, m in sorted(manifests.items())]
    finally:
        consumer.close()


def _verify_partition(consumer, store: RawStore, snapshot: RawSnapshot, manifest: Manifest) -> dict:
    log_events, log_rejects, first_offset, log_end = _read_log(consumer, store.topic, manifest)
    events_files = [  # a file holds one partition's rows of one epoch: only these can hold this partition's
        each.uri
        for ranges in snapshot.file_ranges(snapshot.event_dates()).values()
        for each in ranges
        if (each.partition, each.epoch) == (manifest.partition, manifest.epoch)
    ]
    stored_events = _stored(store, events_files, manifest, ["kafka_offset", "event_id"])
    stored_rejects = _stored(store, snapshot.dead_letter_files(), manifest, ["kafka_offset"])
    events, rejects = _compare(log_events, stored_events), _compare(log_rejects, stored_rejects)
    report = {
        "partition": manifest.partition,
        "epoch": manifest.epoch,
        "verified_offsets": [first_offset, manifest.next_offset],
        "pending": max(0, log_end - manifest.next_offset),
        "valid": len(log_events),
        "archived": sum(stored_events.values()),
        "rejected": len(log_rejects),
        "dead_letter": sum(stored_rejects.values()),
        "events": events,
        "rejects": rejects,
    }
    report["ok"] = not any(events.values()) and not any(rejects.values())
    return report


def _read_log(consumer, topic: str, manifest: Manifest) -> tuple[Counter, Counter, int, int]:
    """(offset, event_id) of the valid messages and offsets of the rejected ones below the resume offset."""
    tp = TopicPartition(topic, manifest.partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    valid: Counter[tuple] = Counter()
    rejected: Counter[tuple] = Counter()
    first, end = None, 0
    while True:
        records = [r for batch in consumer.poll(timeout_ms=1000).values() for r in batch]
        end = max(end, consumer.highwater(tp) or 0)
        if not records:
            if consumer.position(tp) >= min(manifest.next_offset, end):
                break
            continue
        first = records[0].offset if first is None else first
        wanted = [r for r in records if r.offset < manifest.next_offset]
        if wanted:
            decoded = classify(records_frame(wanted))
            valid.update(decoded.events.select("kafka_offset", "event_id").iter_rows())
            rejected.update((offset,) for offset in decoded.rejects["kafka_offset"])
        if records[-1].offset + 1 >= manifest.next_offset:
            break
    return valid, rejected, manifest.next_offset if first is None else first, end


def _stored(store: RawStore, files: list[str], manifest: Manifest, columns: list[str]) -> Counter:
    """The rows of this partition and epoch below its resume point in ``files`` (of one snapshot)."""
    if not files:
        return Counter()
    with store.storage.duckdb() as con:
        rows = con.execute(
            f"select {', '.join(columns)} from read_parquet($files, union_by_name = true) "
            "where kafka_partition = $partition and log_epoch = $epoch and kafka_offset < $next",
            {"files": files, "partition": manifest.partition, "epoch": manifest.epoch, "next": manifest.next_offset},
        ).fetchall()
    return Counter(rows)


def _compare(expected: Counter, stored: Counter) -> dict:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    duplicated = sorted(row for row, count in stored.items() if count > 1)
    return {
        "missing": len(missing),
        "duplicated": len(duplicated),
        "unexpected": len(unexpected),
        "examples": [_offset(row) for row in (missing + duplicated + unexpected)[:MAX_LISTED]],
    }


def _offset(row: tuple) -> int:
    return row[0]
