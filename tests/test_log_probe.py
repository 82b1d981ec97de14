"""The log probe that tells a restarted log from the one counted, against a broker that stalls."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kafka import TopicPartition

from lambdaflow.kafka import clients
from lambdaflow.kafka.log_identity import LogProbe, fingerprint
from tests.kafka_helpers import read_all
from tests.worker_helpers import wait_for


def send(bootstrap: str, topic: str, count: int) -> None:
    producer = clients.producer(bootstrap)
    try:
        for n in range(count):
            producer.send(topic, key=f"user-{n}".encode(), value=b'{"n": %d}' % n, partition=0)
        producer.flush(timeout=30)
    finally:
        producer.close()


def test_a_stalled_broker_is_no_answer_not_a_restarted_log(own_broker) -> None:
    """The probe once cached the log's end (3). The log grows to 8, then the broker stalls (SIGSTOP):
    asked about offset 6, which exists, the probe must answer "don't know", never "not there"."""
    topic, bootstrap = own_broker.topic, own_broker.bootstrap
    tp = TopicPartition(topic, 0)
    send(bootstrap, topic, 3)
    probe = LogProbe(bootstrap, timeout=3.0)
    try:
        first = [r for r in read_all(bootstrap, topic, 3) if r.partition == 0]
        assert probe.holds(tp, 2, fingerprint(first[2])) is True
        time.sleep(1.5)  # the probe's next fetch, sent before it returned, comes back empty (fetch_max_wait_ms)
        send(bootstrap, topic, 5)
        sixth = [r for r in read_all(bootstrap, topic, 8) if r.partition == 0][6]
        os.kill(own_broker.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: "T (stopped)" in Path(f"/proc/{own_broker.pid}/status").read_text(), 10, "SIGSTOP")
            assert probe.holds(tp, 6, fingerprint(sixth)) is None
        finally:
            os.kill(own_broker.pid, signal.SIGCONT)
        assert probe.holds(tp, 6, fingerprint(sixth)) is True
        assert probe.holds(tp, 6, {**fingerprint(sixth), "crc32": 0}) is False
    finally:
        probe.close()
