"""The speed layer's consumer: today's hourly metrics, fresh within seconds, exactly once.

Consumer group ``speed``. Each poll is a micro-batch (up to 50k messages or
250 ms). Per owned partition the batch is classified with the contract,
deduplicated and aggregated with Polars, and counted into the partition's
DuckDB state in one transaction together with the consumed offset. After the
commit the partition's snapshot is replaced atomically; the serving layer sums
the snapshots and never opens a state file.

On assignment the worker opens the partition's state file (retrying while a
previous owner still holds it), seeks to the stored offset and publishes a
fresh snapshot. On revocation it closes the file: nothing is held outside a
commit, so nothing needs saving.

A broker that comes back without its log reuses offsets. The worker checks that
the last record counted is still in the log on assignment, when the consumer
goes back to an earlier offset, and before counting the first records after the
client connected anew. If it is not, the partition's new log is counted from its
beginning (a new epoch).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from kafka import TopicPartition

from lambdaflow.core.boundary import SPEED_RETENTION_GRACE, BatchHours
from lambdaflow.core.contract import EVENT_SCHEMA, Classifier, reasons_by_partition, records_frame
from lambdaflow.core.counters import PartitionCounters
from lambdaflow.core.documents import Documents
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.files import remove_stale_temps
from lambdaflow.kafka.log_identity import fingerprint
from lambdaflow.kafka.loop import Counts, PartitionedLoop
from stream_worker.paths import SpeedPaths
from stream_worker.retention import FollowedManifest
from stream_worker.state import PartitionState, StaleBatch, StateFileBusy

log = logging.getLogger(__name__)

GROUP_ID = "speed"
MAX_BATCH_MESSAGES = 50_000
MAX_BATCH_WAIT_MS = 250
PROGRESS_EVERY_SECONDS = 10.0
PRUNE_EVERY_SECONDS = 600.0
OPEN_RETRY_SECONDS = 0.5


@dataclass
class Owned:
    state: PartitionState | None = None  # opened by _open_pending once the previous owner let go
    position: int = 0
    last_commit: float | None = None
    next_open_attempt: float = 0.0
    status_written: float = 0.0
    check_log: bool = False  # connected anew since the last commit: is the log still the one counted?
    counters: PartitionCounters = field(default_factory=PartitionCounters)

    @property
    def open_state(self) -> PartitionState:
        """The state file; only code that runs after _open_pending opened it asks for it."""
        if self.state is None:
            raise RuntimeError("the partition's state file is not open yet")
        return self.state


@dataclass
class Totals(Counts):
    new_events: int = 0
    rejects: int = 0
    commits: int = 0
    stale_batches: int = 0
    log_restarts: int = 0


@dataclass
class _Progress:
    started: float = field(default_factory=time.monotonic)
    last_report: float = field(default_factory=time.monotonic)
    messages_at_last_report: int = 0
    last_prune: float = field(default_factory=time.monotonic)


class StreamWorker:
    """The sink of the speed layer's consumer loop (:mod:`lambdaflow.kafka.loop`)."""

    def __init__(
        self,
        bootstrap: str,
        data_dir: Path,
        topic: str,
        group_id: str = GROUP_ID,
        session_timeout_ms: int = 6000,
        retention_grace: timedelta = SPEED_RETENTION_GRACE,
        paths: SpeedPaths | None = None,
        retention_days: int = 7,
    ) -> None:
        self.topic = topic
        self.data_dir = data_dir
        self.paths = paths or SpeedPaths(data_dir, topic).live()
        self.retention_grace = retention_grace
        self.retention_days = retention_days
        self.totals = Totals()
        self.owned: dict[int, Owned] = {}
        self._batch = FollowedManifest(Documents.from_env(data_dir))
        self._classifier = Classifier()
        self._progress = _Progress()
        self.loop = PartitionedLoop(
            bootstrap,
            topic,
            group_id,
            self,
            f"stream worker {topic}",
            session_timeout_ms,
            max_poll_records=MAX_BATCH_MESSAGES,
        )
        self._probe = self.loop.probe

    def run(self, stop: threading.Event, until_idle: bool = False, idle_timeout: float = 120.0) -> Totals:
        self.loop.run(stop, until_idle, idle_timeout, timeout_ms=MAX_BATCH_WAIT_MS, max_records=MAX_BATCH_MESSAGES)
        return self.totals

    # the loop's calls

    def partitions(self) -> list[int]:
        return list(self.owned)

    def before_poll(self) -> None:
        self._open_pending()

    def take(self, polled: dict, new_connection: bool) -> None:
        if new_connection:
            self.connected_anew()
        self._count(polled)

    def connected_anew(self) -> None:
        for each in self.owned.values():
            each.check_log = True

    def after_poll(self) -> None:
        self._follow_batch()
        for partition in self.owned:
            self._write_status(partition)
        self._report_progress()
        self._prune_owned()

    def finish(self) -> None:
        """Nothing is held outside a commit: nothing to publish."""

    def close(self) -> None:
        for partition in list(self.owned):
            self._write_status(partition, force=True)
            self._close(partition)
        self._classifier.close()

    # counting

    def _count(self, polled: dict) -> None:
        batches = {}
        for tp, records in polled.items():
            owned = self.owned.get(tp.partition)
            if owned is None or owned.state is None or not records:
                continue
            if records[0].offset < owned.position:
                self._on_rewind(tp, owned, records[0].offset)
                continue
            if owned.check_log and not self._still_the_log_counted(tp, owned):
                continue
            batches[tp.partition] = records
        if not batches:
            return
        started = time.monotonic()
        records = [record for partition_records in batches.values() for record in partition_records]
        decoded = self._classifier.classify(records_frame(records))
        events_by_partition = decoded.events.partition_by("kafka_partition", as_dict=True)
        reasons = reasons_by_partition(decoded.rejects)
        self.totals.messages += len(records)
        self.totals.events += decoded.events.height
        self.totals.rejects += decoded.rejects.height
        self._batch.read()
        for partition, partition_records in batches.items():
            events = events_by_partition.get((partition,))
            self.owned[partition].counters.count(
                len(partition_records), 0 if events is None else events.height, reasons.get(partition, ())
            )
            self._commit(partition, partition_records, events, self._batch.hours)
        took = time.monotonic() - started
        for partition in batches:
            self.owned[partition].counters.batch(took)
            self._write_status(partition)

    def _commit(self, partition: int, records: list, events, batch: BatchHours) -> None:
        owned = self.owned[partition]
        started = time.monotonic()
        start, end = owned.position, records[-1].offset + 1
        if events is None:
            events = pl.DataFrame(schema=EVENT_SCHEMA)
        try:
            new = owned.open_state.apply(events, start, end, fingerprint(records[-1]), batch, fingerprint(records[0]))
        except StaleBatch as error:
            self.totals.stale_batches += 1
            log.warning("%s[%d] batch %d..%d not counted: %s; re-seeking", self.topic, partition, start, end - 1, error)
            self._seek_to_stored(partition)
            return
        owned.position = end
        owned.last_commit = time.monotonic()
        self.totals.new_events += new
        self.totals.commits += 1
        self.paths.publish_snapshot(partition, owned.open_state.snapshot())
        owned.counters.commit(time.monotonic() - started, records[-1].timestamp)
        self.loop.commit(partition, end)
        log.debug("%s[%d] offsets %d..%d committed: %d new events", self.topic, partition, start, end - 1, new)

    def _follow_batch(self) -> None:
        """A new build may have read events the speed layer held back (rank 2, see stream_worker.state): hand
        their user-days to the batch now, not at the next message, which may be long in coming."""
        hours = self._batch.hours
        if self._batch.read() is None or self._batch.hours == hours:
            return
        for partition, owned in self.owned.items():
            if owned.state is not None and owned.state.follow(self._batch.hours):
                self.paths.publish_snapshot(partition, owned.state.snapshot())

    def _holds_last_counted(self, tp: TopicPartition, owned: Owned) -> bool | None:
        """Does the broker's log hold the last record counted? None when the broker does not answer."""
        consumed = owned.open_state.consumed()
        return self._probe.holds(tp, consumed.next_offset - 1, consumed.last_record) if consumed.last_record else True

    def _still_the_log_counted(self, tp: TopicPartition, owned: Owned) -> bool:
        """After a new connection, before counting what it brought: a broker that came back without its
        log may have filled a new one past this position. If so, count the new log from its beginning."""
        same = self._holds_last_counted(tp, owned)
        if same is None:
            self.loop.seek(tp, owned.position)  # fetch again and ask again
            return False
        owned.check_log = False
        if same is False:
            self._restart_log(tp.partition, f"the record at offset {owned.position - 1} is not the one counted")
        return same

    def _on_rewind(self, tp: TopicPartition, owned: Owned, offset: int) -> None:
        same = self._holds_last_counted(tp, owned)
        if same is False:
            self._restart_log(tp.partition, f"offset {offset} arrived after offset {owned.position - 1}")
        else:
            self.loop.went_back(tp, offset, owned.position)

    def _restart_log(self, partition: int, why: str) -> None:
        owned = self.owned[partition]
        epoch = owned.open_state.consumed().epoch + 1
        owned.open_state.restart_log(epoch)
        self.totals.log_restarts += 1
        log.warning(
            "%s[%d] LOG RESTARTED: %s. Counting the new log (epoch %d) from its beginning; "
            "counts so far stay, dedupe keeps repeats out.",
            self.topic,
            partition,
            why,
            epoch,
        )
        self._seek_to_stored(partition)

    # ownership

    def revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            if tp.partition in self.owned:
                self._write_status(tp.partition, force=True)
                self._close(tp.partition)
                log.info("%s[%d] revoked", self.topic, tp.partition)

    def assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self.owned[tp.partition] = Owned()
            self.loop.pause(tp)  # until its state file is open
        self._open_pending()

    def _open_pending(self) -> None:
        now = time.monotonic()
        for partition, owned in self.owned.items():
            if owned.state is not None or now < owned.next_open_attempt:
                continue
            try:
                owned.state = PartitionState(self.paths.state_file(partition), partition)
            except LambdaflowError as error:  # damaged, or built for other metrics: raised by run(), not in a callback
                self.loop.fail(error)
                owned.next_open_attempt = float("inf")
                continue
            except StateFileBusy:
                owned.next_open_attempt = now + OPEN_RETRY_SECONDS
                log.info("%s[%d] state file still held by its previous owner; retrying", self.topic, partition)
                continue
            # Holding the state file, this worker alone writes the partition's snapshot and status.
            remove_stale_temps(self.paths.status_file(partition))
            remove_stale_temps(self.paths.snapshot_file(partition), self.paths.temp_dir)
            self._prune(owned.state)
            consumed = owned.state.consumed()
            tp = TopicPartition(self.topic, partition)
            if self._holds_last_counted(tp, owned) is False:
                self._restart_log(partition, f"the record at offset {consumed.next_offset - 1} is not the one counted")
            else:
                self._seek_to_stored(partition)
            self.paths.publish_snapshot(partition, owned.state.snapshot())
            self.loop.resume(tp)
            log.info(
                "%s[%d] assigned: resuming at offset %d (epoch %d)",
                self.topic,
                partition,
                owned.position,
                owned.state.consumed().epoch,
            )

    def _seek_to_stored(self, partition: int) -> None:
        owned = self.owned[partition]
        owned.position = owned.open_state.consumed().next_offset
        self.loop.seek(TopicPartition(self.topic, partition), owned.position)

    def _close(self, partition: int) -> None:
        owned = self.owned.pop(partition)
        if owned.state is not None:
            owned.state.close()

    def _prune_owned(self) -> None:
        """Drop days the batch layer serves (plus a grace period), every few minutes."""
        if time.monotonic() - self._progress.last_prune < PRUNE_EVERY_SECONDS:
            return
        self._progress.last_prune = time.monotonic()
        for partition, owned in self.owned.items():
            if owned.state is not None:
                self._prune(owned.state)
                self.paths.publish_snapshot(partition, owned.state.snapshot())

    def _prune(self, state: PartitionState) -> None:
        """Drop the days the speed layer no longer needs (see first_day_kept), and seal the days before
        the retention, built or not. The newest day counted bounds a clock that runs ahead."""
        kept = self._batch.first_day_kept(state.first_day(), self.retention_grace)
        if kept is not None:
            state.drop_days_before(kept)
        newest = state.last_day()
        if newest is not None:
            state.seal_days_before(min(newest, datetime.now(UTC).date()) - timedelta(days=self.retention_days - 1))

    # progress

    def _write_status(self, partition: int, force: bool = False) -> None:
        """Progress for `lambdaflow status`, at most once a second per partition unless forced."""
        owned = self.owned[partition]
        now = time.monotonic()
        if owned.state is None or (not force and now - owned.status_written < 1.0):
            return
        owned.status_written = now
        self.paths.write_status(
            partition,
            {
                "topic": self.topic,
                "partition": partition,
                "next_offset": owned.position,
                "end_offset": self.loop.end_offset(partition),
                "epoch": owned.state.consumed().epoch,
                "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "counters": owned.counters.as_dict(),
            },
        )

    def caught_up(self, partition: int) -> bool:
        owned, end = self.owned[partition], self.loop.end_offset(partition)
        return owned.state is not None and end is not None and owned.position >= end

    def _report_progress(self) -> None:
        now = time.monotonic()
        progress = self._progress
        if now - progress.last_report < PROGRESS_EVERY_SECONDS:
            return
        rate = (self.totals.messages - progress.messages_at_last_report) / (now - progress.last_report)
        ends = {p: self.loop.end_offset(p) for p in self.owned}
        lags = {p: (end - self.owned[p].position if end is not None else None) for p, end in sorted(ends.items())}
        last_commit = max((o.last_commit for o in self.owned.values() if o.last_commit), default=None)
        log.info(
            "%s: %.0f messages/s, lag per partition %s, last commit %s",
            self.topic,
            rate,
            lags,
            f"{now - last_commit:.1f} s ago" if last_commit else "none yet",
        )
        progress.last_report = now
        progress.messages_at_last_report = self.totals.messages
