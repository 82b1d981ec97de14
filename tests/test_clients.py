"""The Kafka client wrappers the workers share."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaConnectionError

from lambdaflow.kafka import clients


class RaisingOnce:
    """A consumer whose poll raises what kafka-python 3.0 raises from a coordinator lookup refused while
    the broker is down (seen in a worker's log), then polls normally."""

    def __init__(self) -> None:
        self.polls = 0

    def poll(self, **options) -> dict:
        self.polls += 1
        if self.polls == 1:
            raise KafkaConnectionError("KafkaConnectionError: 111 ECONNREFUSED")
        return {"polled": options}


def test_a_connection_error_out_of_poll_is_an_empty_poll_that_the_watch_hears_of() -> None:
    consumer, complaints = RaisingOnce(), []
    assert clients.poll(consumer, lambda: complaints.append(1), timeout_ms=5) == {}
    assert complaints == [1]
    assert clients.poll(consumer, lambda: complaints.append(1), timeout_ms=5) == {"polled": {"timeout_ms": 5}}
    assert complaints == [1]


def test_other_errors_out_of_poll_still_stop_the_worker() -> None:
    class Broken:
        def poll(self, **options) -> dict:
            raise ValueError("not a connection problem")

    with pytest.raises(ValueError):
        clients.poll(Broken(), lambda: None, timeout_ms=5)
