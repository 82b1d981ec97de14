"""Telling one partition log from another: a restarted broker reuses offsets."""

from __future__ import annotations

import time
import zlib

from kafka import TopicPartition

from lambdaflow.core.errors import BrokerUnavailable
from lambdaflow.kafka import clients


def fingerprint(record) -> dict:
    """Identifies a record well enough to tell a restarted log from the one archived."""
    digest = zlib.crc32(record.key or b"", zlib.crc32(record.value or b""))
    return {"offset": record.offset, "timestamp": record.timestamp, "crc32": digest}


class LogProbe:
    """Reads single records back from the broker, outside the consumer group.

    Each question gets a consumer of its own: the log's end it compares with is then one the broker
    reported for this question. A consumer kept between questions answers ``highwater`` from an
    earlier fetch, which during a broker stall lies below offsets that exist, and the log would look
    restarted. (``end_offsets`` is no way out: the embedded broker answers it wrongly.)
    """

    def __init__(self, bootstrap: str, timeout: float = 10.0) -> None:
        self._bootstrap = bootstrap
        self._timeout = timeout

    def holds(self, tp: TopicPartition, offset: int, expected: dict) -> bool | None:
        """Is the record at ``offset`` the one fingerprinted? None when the broker does not answer."""
        try:
            consumer = clients.consumer(
                self._bootstrap,
                None,
                max_partition_fetch_bytes=1024 * 1024,
                bootstrap_timeout_ms=max(1000, int(self._timeout * 1000)),
                request_timeout_ms=max(1000, int(self._timeout * 1000)),
            )
        except BrokerUnavailable:
            return None
        try:
            consumer.assign([tp])
            consumer.seek(tp, offset)
            deadline = time.monotonic() + self._timeout
            while time.monotonic() < deadline:
                records = consumer.poll(timeout_ms=200, max_records=1).get(tp)
                if records:
                    found = records[0]
                    if found.offset == offset:
                        return fingerprint(found) == expected
                    # Below: the consumer was reset to the start of a shorter log. Above: the record
                    # left the log (retention, compaction), so there is nothing to compare.
                    return found.offset > offset
                end = consumer.highwater(tp)  # from a fetch this consumer made for this question
                if end is not None and end <= offset:
                    return False
            return None
        finally:
            consumer.close()

    def close(self) -> None:
        """Nothing is kept between questions."""
