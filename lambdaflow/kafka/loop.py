"""The one partitioned consumer loop both workers run: the archiver and the stream worker are its sinks.

The loop owns what is the same for both: the group member (kafka-python's
consumer), the broker watch, the log probe, the assignment clock, each owned
partition's end offset, the rebalance callbacks, and the ``--until-idle`` exit.
A sink owns what makes it exactly-once, in a file of its own: what it does when
it is assigned or loses a partition, how it counts a batch, and when it is
caught up.

One turn of the loop::

    watch the broker -> sink.before_poll() -> start sink.take(previous batch) on the counting thread
        -> poll the next batch (at once under --until-idle when the last one reached every end offset)
        -> wait for take -> apply the consumer calls take asked for
        -> read end offsets -> sink.after_poll() -> caught up everywhere? stop (--until-idle)

Counting a batch overlaps with polling the next: kafka-python decodes records
in Python while DuckDB and Polars, which release the GIL, do most of a sink's
work. The sink is still used by one thread at a time: ``take`` runs while the
loop thread only polls, and the rebalance callbacks, which kafka-python calls
from inside ``poll``, first wait for ``take`` to return. The consumer is not
thread-safe, so ``take`` reaches it only through :meth:`PartitionedLoop.seek`,
:meth:`~PartitionedLoop.seek_to_beginning` and :meth:`~PartitionedLoop.commit`,
which the loop applies on its own thread once ``take`` has returned. Records
polled for a partition that was moved after they were polled (by ``take``,
``after_poll`` or ``before_poll``) are dropped: the consumer fetches them again
from where it was moved to.

An error a sink raises in a rebalance callback (a damaged manifest, a state
file for other metrics) is raised by :meth:`PartitionedLoop.run` on the next
turn, not inside kafka-python; so is an error ``take`` raised.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
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
        broker anew since the last batch, so what it fetched may come from a log that restarted.
        Runs on the counting thread while the loop polls: it reaches the consumer only through the
        loop's seek, seek_to_beginning and commit."""
        ...

    def after_poll(self) -> None:
        """Work due after each batch (publishing, status, progress)."""
        ...

    def connected_anew(self) -> None:
        """In a rebalance callback, before it: the consumer connected anew since the last batch, so all
        the sink holds came over the old connection, from the log as it was (take is told as well)."""
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


class _Counting:
    """The sink's ``take`` of one batch, on a thread of its own while the loop polls the next."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="counting")
        self._pending: Future | None = None

    def start(self, take: Callable[..., None], *args: Any) -> None:
        self._pending = self._pool.submit(take, *args)

    def wait(self) -> None:
        """Until ``take`` returned; its error, if any, is raised by :meth:`result`."""
        if self._pending is not None:
            wait_for([self._pending])

    def result(self) -> None:
        """Wait for ``take`` and raise what it raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()


@dataclass
class _Seek:
    tp: TopicPartition
    offset: int | None  # None: the beginning of the log


THREAD_SWITCH_SECONDS = 0.001


def hand_the_interpreter_over_often() -> None:
    """For a worker, whose counting thread mostly waits in DuckDB and Polars: let it have the
    interpreter back within a millisecond of their return instead of Python's 5 ms. The polling
    thread holds the interpreter nearly always, so each return from C code would otherwise wait up
    to the whole interval (measured: the archiver reads about 15% more messages a second)."""
    sys.setswitchinterval(THREAD_SWITCH_SECONDS)


def keep_heap_off_collections() -> None:
    """For a long-running worker, once its modules are imported: move every object alive now out of
    the garbage collector's sight. Polars, DuckDB and kafka-python leave a large heap of objects that
    never become garbage; each full collection, which a poll's many new records set off, would walk
    all of them again (measured: the archiver reads 30% more messages a second with it)."""
    gc.collect()
    gc.freeze()


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
        self._new_connection = False  # seen by a rebalance callback, not yet handed to take
        self._ends: dict[int, int] = {}
        self._fetched: dict[int, int] = {}  # per partition: the offset after the last record polled
        self._fatal: LambdaflowError | None = None
        self.first_message_at: float | None = None  # time.monotonic() of the first poll that brought records
        self._counting = _Counting()
        self._thread: int | None = None  # the loop's thread, once it runs
        self._seeks: list[_Seek] = []  # asked for by take, applied by the loop's thread
        self._commits: dict[int, int] = {}
        self._moved: set[TopicPartition] = set()  # seeked since the batch in hand was polled
        self._polling = False
        self._partitions: int | None = None

    def run(
        self, stop: threading.Event, until_idle: bool = False, idle_timeout: float = 120.0, **poll_options: Any
    ) -> None:
        started = time.monotonic()
        self._thread = threading.get_ident()
        self.consumer.subscribe([self.topic], listener=self)
        self.watch.install()
        polled: dict[TopicPartition, list] = {}
        new_connection = False
        try:
            while not stop.is_set():
                self.watch.check()
                self.sink.before_poll()
                if self._fatal is not None:
                    raise self._fatal
                self._counting.start(self.sink.take, self._without_moved(polled), new_connection)
                options = self._poll_options(until_idle, polled, poll_options)
                self._polling = True
                try:
                    polled = clients.poll(self.consumer, self.watch.client_complained, **options)
                finally:
                    self._polling = False
                self._note_fetched(polled)
                new_connection, self._new_connection = self._connected_anew(), False
                self._counting.result()
                self._seek_asked()
                self._commit_asked()
                if self.first_message_at is None and any(polled.values()):
                    self.first_message_at = time.monotonic()
                self._read_end_offsets()
                self.sink.after_poll()
                owned = list(self.sink.partitions())
                if (
                    until_idle
                    and not any(polled.values())
                    and owned
                    and all(self.sink.caught_up(p) for p in owned)
                    and self._settled(owned)
                ):
                    log.info("%s: caught up on partitions %s", self.topic, sorted(owned))
                    break
                if until_idle and not owned and time.monotonic() - started > idle_timeout:
                    raise NoPartitionAssigned(self.topic, self.group_id, idle_timeout)
            self.sink.finish()
        finally:
            try:
                self._counting.close()
                self.sink.close()
            finally:
                clients.close_consumer(self.consumer)
                self.probe.close()
                self.watch.close()

    def _poll_options(self, until_idle: bool, polled: dict[TopicPartition, list], options: dict) -> dict:
        """Under ``--until-idle``, the poll after the records that reach every owned partition's end
        offset does not wait for more: an empty answer at once is what lets the loop stop."""
        owned = list(self.sink.partitions())
        if until_idle and owned and any(polled.values()) and all(self._fetched_to_end(p) for p in owned):
            return {**options, "timeout_ms": 0}
        return options

    def _note_fetched(self, polled: dict[TopicPartition, list]) -> None:
        for tp, records in polled.items():
            if records:
                self._fetched[tp.partition] = records[-1].offset + 1

    def _fetched_to_end(self, partition: int) -> bool:
        fetched, end = self._fetched.get(partition), self._ends.get(partition)
        return fetched is not None and end is not None and fetched >= end

    def first_message_after(self, started: float) -> float | None:
        """Seconds from ``started`` (a time.monotonic()) to the first records polled; None if none came."""
        return None if self.first_message_at is None else round(self.first_message_at - started, 3)

    def fail(self, error: LambdaflowError) -> None:
        """Stop the loop with ``error`` at its next turn (the first error wins)."""
        self._fatal = self._fatal or error

    def went_back(self, tp: TopicPartition, offset: int, position: int) -> None:
        """The consumer fetched from below where the sink stands, in the same log: fetch from there again."""
        log.warning(
            "%s[%d] the consumer went back to offset %d; resuming at %d", self.topic, tp.partition, offset, position
        )
        self.seek(tp, position)

    # the consumer calls a sink makes: at once on the loop's thread, after take returns from the counting thread

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._ask(_Seek(tp, offset))

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self._ask(_Seek(tp, None))

    def commit(self, partition: int, offset: int) -> None:
        """Commit an offset to Kafka for lag tools (see clients.commit_for_lag_tools)."""
        self._commits[partition] = offset
        if self._on_loop_thread():
            self._commit_asked()

    def pause(self, tp: TopicPartition) -> None:
        self.consumer.pause(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.consumer.resume(tp)

    def _on_loop_thread(self) -> bool:
        return self._thread is None or self._thread == threading.get_ident()

    def _ask(self, seek: _Seek) -> None:
        self._seeks.append(seek)
        if self._on_loop_thread():
            self._seek_asked()

    def _without_moved(self, polled: dict[TopicPartition, list]) -> dict[TopicPartition, list]:
        """The polled batch less the partitions moved since it was polled (by take, after_poll or
        before_poll): those records come from where the partition was, and are fetched again from where
        it was moved to. A seek made inside poll (a rebalance callback) is not among them: kafka-python
        returns only records from the position it left."""
        moved, self._moved = self._moved, set()
        return {tp: records for tp, records in polled.items() if tp not in moved}

    def _seek_asked(self) -> None:
        seeks, self._seeks = self._seeks, []
        for seek in seeks:
            try:
                if seek.offset is None:
                    self.consumer.seek_to_beginning(seek.tp)
                else:
                    self.consumer.seek(seek.tp, seek.offset)
            except ValueError:  # kafka-python's "Unassigned partition": revoked meanwhile, its next owner seeks
                log.debug("%s[%d]: not assigned any more; seek dropped", self.topic, seek.tp.partition)
                continue
            self._fetched.pop(seek.tp.partition, None)
            if not self._polling:
                self._moved.add(seek.tp)

    def _commit_asked(self) -> None:
        commits, self._commits = self._commits, {}
        if commits:
            clients.commit_for_lag_tools(self.consumer, self.topic, commits)

    def end_offset(self, partition: int) -> int | None:
        """The partition's end offset as last read (None: not read yet)."""
        return self._ends.get(partition)

    def partition_count(self) -> int | None:
        """How many partitions the topic has, as the broker reported at the end of the last turn."""
        return self._partitions

    def _read_end_offsets(self) -> None:
        self._partitions = len(self.consumer.partitions_for_topic(self.topic) or ()) or None
        for partition in self.sink.partitions():
            end = self.consumer.highwater(TopicPartition(self.topic, partition))
            if end is not None:
                self._ends[partition] = end

    def _settled(self, owned: list[int]) -> bool:
        return self._assignment.settled(set(owned), self.consumer.partitions_for_topic(self.topic))

    # kafka-python calls these from inside poll

    def _connected_anew(self) -> bool:
        """Has the consumer connected anew since the last batch was handed to take?"""
        self._new_connection = self._connections.since_last_asked() or self._new_connection
        return self._new_connection

    def _take_returned(self) -> None:
        """In a rebalance callback, before the sink gains or loses partitions: let take finish and apply
        what it asked of the consumer (its error is raised by run, after poll). A broker back without
        its log drops the members: the sink hears of the new connection before it lets go."""
        self._counting.wait()
        self._seek_asked()
        self._commit_asked()
        if self._connections.since_last_asked():
            self._new_connection = True
            self.sink.connected_anew()

    def on_partitions_revoked(self, revoked) -> None:
        self._take_returned()
        self.watch.client_got_through()
        self._assignment.changed()
        self.sink.revoked(list(revoked))
        for tp in revoked:
            self._ends.pop(tp.partition, None)
            self._fetched.pop(tp.partition, None)

    def on_partitions_assigned(self, assigned) -> None:
        self._take_returned()
        self.watch.client_got_through()
        self._assignment.changed()
        try:
            self.sink.assigned(sorted(assigned, key=lambda tp: tp.partition))
        except LambdaflowError as error:
            self.fail(error)
