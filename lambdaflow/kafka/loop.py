"""The one partitioned consumer loop both workers run: the archiver and the stream worker are its sinks.

The loop owns what is the same for both: the group member (kafka-python's
consumer), the broker watch, the log probe, the assignment clock, each owned
partition's end offset, the rebalance callbacks, and the ``--until-idle`` exit.
A sink owns what makes it exactly-once, in a file of its own: what it does when
it is assigned or loses a partition, how it counts a batch, and when it is
caught up.

One turn of the loop::

    watch the broker -> sink.before_poll() -> poll -> sink.take(records, new connection?)
        -> read end offsets -> sink.after_poll() -> caught up everywhere? stop (--until-idle)

kafka-python calls the rebalance callbacks from inside ``poll``; an error a sink
raises there (a damaged manifest, a state file for other metrics) is raised by
:meth:`PartitionedLoop.run` on the next turn, not inside kafka-python.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener, TopicPartition

from lambdaflow.core.errors import LambdaflowError
from lambdaflow.kafka import clients
from lambdaflow.kafka.broker_watch import BrokerWatch
from lambdaflow.kafka.group import AssignmentClock, NoPartitionAssigned
from lambdaflow.kafka.log_identity import LogProbe

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What a worker does with the partitions the loop hands it."""

    def partitions(self) -> Iterable[int]:
        """The partitions the sink holds now."""
        ...

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """The group gave it these partitions (called from inside poll)."""
        ...

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """The group took these partitions away (called from inside poll): let go of them now."""
        ...

    def before_poll(self) -> None:
        """Work due before the next poll."""
        ...

    def take(self, polled: dict[TopicPartition, list], new_connection: bool) -> None:
        """Count one batch of records, per partition. ``new_connection``: the consumer connected to the
        broker anew since the last batch, so what it fetched may come from a log that restarted."""
        ...

    def after_poll(self) -> None:
        """Work due after each batch (publishing, status, progress)."""
        ...

    def caught_up(self, partition: int) -> bool:
        """Whether everything up to the partition's end offset is counted and published."""
        ...

    def finish(self) -> None:
        """The loop stops cleanly: publish what is pending."""
        ...

    def close(self) -> None:
        """The loop ends, cleanly or not: release what the sink holds."""
        ...


@dataclass
class Counts:
    """What a sink has done so far; each sink adds its own counts (its summary on exit)."""

    messages: int = 0
    events: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class PartitionedLoop(ConsumerRebalanceListener):
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        sink: Sink,
        name: str,
        session_timeout_ms: int = 6000,
        **consumer_options: Any,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.sink = sink
        self.probe = LogProbe(bootstrap)
        self.watch = BrokerWatch(bootstrap, name)
        self.consumer = clients.consumer(
            bootstrap,
            group_id,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(500, session_timeout_ms // 4),
            **consumer_options,
        )
        self._assignment = AssignmentClock(session_timeout_ms)
        self._connections = clients.NewConnections(self.consumer)
        self._ends: dict[int, int] = {}
        self._fatal: LambdaflowError | None = None

    def run(
        self, stop: threading.Event, until_idle: bool = False, idle_timeout: float = 120.0, **poll_options: Any
    ) -> None:
        started = time.monotonic()
        self.consumer.subscribe([self.topic], listener=self)
        self.watch.install()
        try:
            while not stop.is_set():
                self.watch.check()
                self.sink.before_poll()
                if self._fatal is not None:
                    raise self._fatal
                polled = clients.poll(self.consumer, self.watch.client_complained, **poll_options)
                self.sink.take(polled, self._connections.since_last_asked())
                self._read_end_offsets()
                self.sink.after_poll()
                owned = list(self.sink.partitions())
                if until_idle and owned and all(self.sink.caught_up(p) for p in owned) and self._settled(owned):
                    log.info("%s: caught up on partitions %s", self.topic, sorted(owned))
                    break
                if until_idle and not owned and time.monotonic() - started > idle_timeout:
                    raise NoPartitionAssigned(self.topic, self.group_id, idle_timeout)
            self.sink.finish()
        finally:
            try:
                self.sink.close()
            finally:
                clients.close_consumer(self.consumer)
                self.probe.close()
                self.watch.close()

    def fail(self, error: LambdaflowError) -> None:
        """Stop the loop with ``error`` at its next turn (the first error wins)."""
        self._fatal = self._fatal or error

    def went_back(self, tp: TopicPartition, offset: int, position: int) -> None:
        """The consumer fetched from below where the sink stands, in the same log: fetch from there again."""
        log.warning(
            "%s[%d] the consumer went back to offset %d; resuming at %d", self.topic, tp.partition, offset, position
        )
        self.consumer.seek(tp, position)

    def end_offset(self, partition: int) -> int | None:
        """The partition's end offset as last read (None: not read yet)."""
        return self._ends.get(partition)

    def partition_count(self) -> int | None:
        """How many partitions the topic has, as the broker last reported."""
        return len(self.consumer.partitions_for_topic(self.topic) or ()) or None

    def _read_end_offsets(self) -> None:
        for partition in self.sink.partitions():
            end = self.consumer.highwater(TopicPartition(self.topic, partition))
            if end is not None:
                self._ends[partition] = end

    def _settled(self, owned: list[int]) -> bool:
        return self._assignment.settled(set(owned), self.consumer.partitions_for_topic(self.topic))

    # kafka-python calls these from inside poll

    def on_partitions_revoked(self, revoked) -> None:
        self.watch.client_got_through()
        self._assignment.changed()
        self.sink.revoked(list(revoked))
        for tp in revoked:
            self._ends.pop(tp.partition, None)

    def on_partitions_assigned(self, assigned) -> None:
        self.watch.client_got_through()
        self._assignment.changed()
        try:
            self.sink.assigned(sorted(assigned, key=lambda tp: tp.partition))
        except LambdaflowError as error:
            self.fail(error)
