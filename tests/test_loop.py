"""The consumer loop both workers share, with a recording sink, on a real broker over TCP.

The loop counts one batch on its counting thread while it polls the next; these
tests pin what that overlap must not change: a sink sees each partition's records
in order and without gaps, even when it moves the consumer while the next batch
is already polled, and an error in its counting stops the loop.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from kafka import TopicPartition

from lambdaflow.kafka import clients
from lambdaflow.kafka.loop import PartitionedLoop

MESSAGES = 2_000


class Recorder:
    """A sink that records every run of records it takes, and the gaps between them."""

    def __init__(
        self, rewind_after: int | None = None, rewind_to: int = 0, fail: bool = False, after_poll: bool = False
    ) -> None:
        self.loop: PartitionedLoop | None = None
        self.position: dict[int, int] = {}
        self.runs: list[tuple[int, int]] = []  # (first offset, last offset) per take, partition 0
        self.gaps: list[tuple[int, int]] = []  # (expected, got)
        self.threads: set[str] = set()
        self.rewind_after, self.rewind_to, self.fail = rewind_after, rewind_to, fail
        self.rewind_in_after_poll = after_poll  # as the archiver does when a publish finds a new log
        self.finished: dict[int, int] | None = None  # the positions when the loop finished
        self.closed = False

    def partitions(self) -> list[int]:
        return list(self.position)

    def assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.position[tp.partition] = 0

    def revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.position.pop(tp.partition, None)

    def before_poll(self) -> None:
        pass

    def take(self, polled: dict, new_connection: bool) -> None:
        assert self.loop is not None
        for tp, records in polled.items():
            if not records or tp.partition not in self.position:
                continue
            self.threads.add(threading.current_thread().name)
            if self.fail:
                raise RuntimeError("the sink failed while counting")
            first, last = records[0].offset, records[-1].offset
            self.runs.append((first, last))
            if first != self.position[tp.partition]:
                self.gaps.append((self.position[tp.partition], first))
            self.position[tp.partition] = last + 1
            if not self.rewind_in_after_poll:
                self._maybe_rewind(tp)  # as a stale batch makes the stream worker do

    def _maybe_rewind(self, tp: TopicPartition) -> None:
        assert self.loop is not None
        if self.rewind_after is not None and self.position.get(tp.partition, 0) > self.rewind_after:
            self.rewind_after = None  # once
            self.loop.seek(tp, self.rewind_to)
            self.position[tp.partition] = self.rewind_to

    def after_poll(self) -> None:
        if self.rewind_in_after_poll:
            self._maybe_rewind(TopicPartition(self.loop.topic if self.loop else "", 0))

    def connected_anew(self) -> None:
        pass

    def caught_up(self, partition: int) -> bool:
        assert self.loop is not None
        end = self.loop.end_offset(partition)
        return end is not None and self.position[partition] >= end

    def finish(self) -> None:
        self.finished = dict(self.position)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def one_partition(kafka_bootstrap: str) -> str:
    """A fresh one-partition topic holding MESSAGES messages, offsets 0..MESSAGES-1."""
    name = f"loop-{uuid.uuid4().hex[:12]}"
    clients.ensure_topic(kafka_bootstrap, name, partitions=1)
    producer = clients.producer(kafka_bootstrap)
    try:
        for i in range(MESSAGES):
            producer.send(name, value=str(i).encode(), partition=0)
        producer.flush()
    finally:
        producer.close()
    return name


def _run(bootstrap: str, topic: str, sink: Recorder) -> None:
    # Small polls, so that the loop holds a polled batch while the sink counts the one before.
    loop = PartitionedLoop(bootstrap, topic, f"loop-{uuid.uuid4().hex[:8]}", sink, "loop test", max_poll_records=100)
    sink.loop = loop
    loop.run(threading.Event(), until_idle=True, timeout_ms=200)


def test_the_sink_counts_on_its_own_thread_and_sees_every_record_once_in_order(
    kafka_bootstrap: str, one_partition: str
) -> None:
    sink = Recorder()
    _run(kafka_bootstrap, one_partition, sink)
    assert sink.gaps == []
    assert sink.finished == {0: MESSAGES}
    assert sum(last - first + 1 for first, last in sink.runs) == MESSAGES
    assert sink.threads and all(name.startswith("counting") for name in sink.threads)
    assert sink.closed


@pytest.mark.parametrize("in_after_poll", [False, True], ids=["by-take", "by-after-poll"])
def test_a_seek_drops_the_batch_polled_before_it(kafka_bootstrap: str, one_partition: str, in_after_poll: bool) -> None:
    """The batch polled while the sink counted (or while after_poll ran, on the loop's thread) comes from
    where the partition was; the sink must next see the records from where it moved the consumer."""
    sink = Recorder(rewind_after=700, rewind_to=250, after_poll=in_after_poll)
    _run(kafka_bootstrap, one_partition, sink)
    assert sink.gaps == []
    rewound = next(i for i, (first, last) in enumerate(sink.runs) if last >= 700)
    assert sink.runs[rewound + 1][0] == 250
    assert sink.finished == {0: MESSAGES}


def test_an_error_while_counting_stops_the_loop_and_closes_the_sink(kafka_bootstrap: str, one_partition: str) -> None:
    sink = Recorder(fail=True)
    with pytest.raises(RuntimeError, match="failed while counting"):
        _run(kafka_bootstrap, one_partition, sink)
    assert sink.closed and sink.finished is None


def test_until_idle_the_loop_stops_without_waiting_out_a_poll_once_the_records_reach_the_end(
    kafka_bootstrap: str, one_partition: str
) -> None:
    """`--until-idle` stops after an empty poll; once the records in hand reach the end offset that poll
    does not wait for more, so a worker run to catch up costs no poll timeout at the end."""
    sink = Recorder()
    loop = PartitionedLoop(kafka_bootstrap, one_partition, f"loop-{uuid.uuid4().hex[:8]}", sink, "loop test")
    sink.loop = loop
    polls: list[tuple[int, int]] = []  # (timeout_ms asked, records returned)
    poll = loop.consumer.poll

    def recorded_poll(**options):
        polled = poll(**options)
        polls.append((options["timeout_ms"], sum(len(records) for records in polled.values())))
        return polled

    loop.consumer.poll = recorded_poll
    loop.run(threading.Event(), until_idle=True, timeout_ms=30_000)
    assert sink.finished == {0: MESSAGES}
    assert polls[-1] == (0, 0)
    assert all(timeout == 30_000 for timeout, _ in polls[:-1])
