"""Telling one partition log from another: a restarted broker reuses offsets."""

from __future__ import annotations

import time
import zlib

from kafka import TopicPartition

from stream_worker import clients


def fingerprint(record) -> dict:
    """Identifies a record well enough to tell a restarted log from the one archived."""
    digest = zlib.crc32(record.key or b"", zlib.crc32(record.value or b""))
    return {"offset": record.offset, "timestamp": record.timestamp, "crc32": digest}


class LogProbe:
    """Reads single records back from the broker, outside the consumer group."""

    def __init__(self, bootstrap: str, timeout: float = 10.0) -> None:
        self._bootstrap = bootstrap
        self._timeout = timeout
        self._consumer = None

    def holds(self, tp: TopicPartition, offset: int, expected: dict) -> bool | None:
        """Is the record at ``offset`` the one fingerprinted? None when the broker does not answer."""
        if self._consumer is None:
            self._consumer = clients.consumer(self._bootstrap, None, max_partition_fetch_bytes=1024 * 1024)
        consumer = self._consumer
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
            end = consumer.highwater(tp)
            if end is not None and end <= offset:
                return False
        return None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


