"""The batch layer's consumer: lands every message once in the raw store.

Consumer group ``archiver``. Per owned partition it buffers classified
messages until the buffer is big enough or old enough (or the partition is
caught up under ``--until-idle``), then publishes the batch: one Parquet file
per event date plus a dead-letter file, each written to a temporary name,
fsynced and linked to a name that must be new, and only then the partition's
manifest, the one resume point. Kafka's committed offsets are written after
that, for lag tools only.

Before it resumes a partition and before it publishes a batch, the archiver
reads the record just before the resume offset back from the broker and checks
that it is the record it archived last. If it is not, the partition's log
restarted (a memory-only broker came back empty, then perhaps filled again):
the archiver drops what it buffered from that log, starts a new log epoch at
the new log's beginning, and says so loudly. New files never collide with old
ones, and no record of a new log is filed under an old epoch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

import polars as pl
from kafka import TopicPartition

from lambdaflow.batch.buffers import (
    Buffer,
    OwnedPartition,
    RollPolicy,
    Totals,
    arrived_by,
    concat_or_empty,
    previous_status,
)
from lambdaflow.core.boundary import log_id
from lambdaflow.core.contract import EVENT_SCHEMA, REJECT_SCHEMA, Classifier, records_frame
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.raw_store import Manifest, RawStore
from lambdaflow.core.raw_tables import Fenced, ResumePoint
from lambdaflow.kafka.loop import PartitionedLoop

log = logging.getLogger(__name__)

GROUP_ID = "archiver"
DEFAULT_ROLL = RollPolicy()
STATUS_EVERY_SECONDS = 1.0


class Archiver:
    """The sink of the archiver's consumer loop (:mod:`lambdaflow.kafka.loop`)."""

    def __init__(
        self,
        bootstrap: str,
        store: RawStore,
        roll: RollPolicy = DEFAULT_ROLL,
        group_id: str = GROUP_ID,
        session_timeout_ms: int = 6000,
    ) -> None:
        self.store = store
        self.topic = store.topic
        self.roll = roll
        self.totals = Totals()
        self.owned: dict[int, OwnedPartition] = {}
        self._until_idle = False
        self._classifier = Classifier()
        self._departures_seen = 0
        self.loop = PartitionedLoop(bootstrap, self.topic, group_id, self, f"archiver {self.topic}", session_timeout_ms)
        self._probe = self.loop.probe

    def run(self, stop: threading.Event, until_idle: bool = False, idle_timeout: float = 120.0) -> Totals:
        self._until_idle = until_idle
        self.loop.run(stop, until_idle, idle_timeout, timeout_ms=500)
        return self.totals

    # the loop's calls

    def partitions(self) -> list[int]:
        return list(self.owned)

    def before_poll(self) -> None:
        if self.loop.watch.departures > self._departures_seen:
            self._publish_on_departure()

    def take(self, polled: dict, new_connection: bool) -> None:
        if new_connection:
            self._publish_before_new_connection()
        self._accept(polled)

    def connected_anew(self) -> None:
        self._publish_before_new_connection()

    def after_poll(self) -> None:
        for partition in list(self.owned):
            self._maybe_publish(partition, self._until_idle)
            self._write_status(partition)

    def finish(self) -> None:
        for partition in list(self.owned):
            self._publish(partition)
            self._write_status(partition, force=True)

    def close(self) -> None:
        self._classifier.close()

    def _accept(self, polled: dict) -> None:
        if not polled:
            return
        started = time.monotonic()
        accepted, taken = [], []
        for tp, records in polled.items():
            owned = self.owned.get(tp.partition)
            if owned is None or not records:
                continue
            if records[0].offset < owned.position:
                self._on_rewind(tp, records[0].offset)
                continue
            owned.position = records[-1].offset + 1
            accepted.extend(records)
            owned.buffer.add(records)
            owned.counters.count(messages=len(records))
            taken.append(tp.partition)
        if not accepted:
            return
        decoded = self._classifier.classify(records_frame(accepted))
        for (partition,), events in decoded.events.partition_by("kafka_partition", as_dict=True).items():
            self.owned[partition].buffer.add_events(events)
            self.owned[partition].counters.count(events=events.height)
        for (partition,), rejects in decoded.rejects.partition_by("kafka_partition", as_dict=True).items():
            self.owned[partition].buffer.rejects.append(rejects)
            self.owned[partition].counters.count(reasons=rejects["reason"].to_list())
            for row in rejects.head(3).iter_rows(named=True):
                log.debug("%s[%d] offset %d rejected: %s", self.topic, partition, row["kafka_offset"], row["reason"])
        took = time.monotonic() - started
        for partition in taken:
            self.owned[partition].counters.batch(took)

    def _on_rewind(self, tp: TopicPartition, offset: int) -> None:
        """The consumer was reset below where it stood: most likely the log restarted."""
        owned = self.owned[tp.partition]
        epoch = owned.manifest.epoch
        self._publish(tp.partition)  # checks the log first; starts the new epoch if it restarted
        owned = self.owned[tp.partition]
        if owned.manifest.epoch != epoch:
            return
        if self._same_log(tp.partition, owned.manifest) is False:
            self._start_new_epoch(tp, owned, f"offset {offset} arrived after offset {owned.position - 1}")
        else:
            self.loop.went_back(tp, offset, owned.position)

    def _same_log(self, partition: int, manifest: Manifest, buffer: Buffer | None = None) -> bool | None:
        """Does the broker's log still hold what this epoch archived? None: cannot tell now."""
        if manifest.next_offset > 0 and manifest.last_record is not None:
            offset, expected = manifest.next_offset - 1, manifest.last_record
        elif buffer is not None and buffer.first_record is not None:
            offset, expected = buffer.first_record["offset"], buffer.first_record
        else:
            return True  # nothing read from this log yet
        return self._probe.holds(TopicPartition(self.topic, partition), offset, expected)

    def _start_new_epoch(self, tp: TopicPartition, owned: OwnedPartition, why: str) -> None:
        if not owned.buffer.empty:
            log.warning(
                "%s[%d] dropping %d buffered messages read from a log that is gone",
                self.topic,
                tp.partition,
                owned.buffer.messages,
            )
        try:
            point = self.store.tables.start_epoch(tp.partition, owned.manifest.resume_point)
        except Fenced as error:
            log.warning("%s[%d] %s; re-reading where the partition stands", self.topic, tp.partition, error)
            self._take(tp)
            return
        manifest = replace(owned.manifest, epoch=point.epoch, next_offset=point.next_offset, last_record=None)
        log.warning(
            "%s[%d] LOG RESTARTED: %s. Starting log epoch %d at the beginning of the new log; "
            "files of epoch %d stay as they are.",
            self.topic,
            tp.partition,
            why,
            manifest.epoch,
            manifest.epoch - 1,
        )
        self.totals.new_epochs += 1
        owned.manifest = manifest
        owned.buffer = Buffer(epoch=manifest.epoch, start=0, opened_at=time.monotonic())
        owned.position = 0
        self.loop.seek_to_beginning(tp)

    # publishing

    def _maybe_publish(self, partition: int, until_idle: bool) -> None:
        buffer = self.owned[partition].buffer
        if buffer.empty:
            return
        if self.roll.due(buffer, caught_up=self._consumed_to_end(partition), until_idle=until_idle):
            self._publish(partition)

    def _publish_on_departure(self) -> None:
        """The broker stopped answering: publish every buffer now. All of it was read from the log that
        just went away, so it is kept even if the broker comes back empty (a memory-only broker does),
        and nothing read from a new log can be mixed into it."""
        self._departures_seen = self.loop.watch.departures
        buffered = sum(owned.buffer.messages for owned in self.owned.values())
        if buffered:
            log.info("%s: publishing the %d buffered messages while the broker is away", self.topic, buffered)
        for partition in list(self.owned):
            self._publish(partition, check_log=False)

    def _publish_before_new_connection(self) -> None:
        """The consumer connected anew: what it fetches now may come from a broker that restarted
        without its log, too fast for the watch to see it leave. Every buffered record came over the
        earlier connection, from the log it read, so the buffers are published as they are, before
        any new record joins them; the next publish checks the log as always."""
        buffered = sum(owned.buffer.messages for owned in self.owned.values())
        if buffered:
            log.info(
                "%s: new connection to the broker: publishing the %d buffered messages first", self.topic, buffered
            )
        for partition in list(self.owned):
            self._publish(partition, check_log=False)

    def _publish(self, partition: int, check_log: bool = True) -> None:
        owned = self.owned[partition]
        buffer = owned.buffer
        if buffer.empty:
            return
        same_log = self._same_log(partition, owned.manifest, buffer) if check_log else True
        if same_log is None:
            log.warning("%s[%d] cannot reach the broker to check its log; publishing later", self.topic, partition)
            return
        if not same_log:
            self._start_new_epoch(
                TopicPartition(self.topic, partition),
                owned,
                f"the record before offset {max(owned.manifest.next_offset, buffer.start)} is not the one archived",
            )
            return
        assert buffer.last is not None and buffer.last_record is not None  # not empty: checked above
        since, until = ResumePoint(buffer.epoch, buffer.start), ResumePoint(buffer.epoch, buffer.last + 1)
        started = time.monotonic()
        ingested_at = datetime.now(UTC)
        stamp = pl.lit(ingested_at).dt.cast_time_unit("us").alias("ingested_at")
        events = concat_or_empty(buffer.events, EVENT_SCHEMA).with_columns(stamp).sort("kafka_offset")
        rejects = (
            concat_or_empty(buffer.rejects, REJECT_SCHEMA)
            .with_columns(stamp, ingest_date=pl.lit(ingested_at.date()))
            .sort("kafka_offset")
        )
        try:
            self.store.tables.begin(partition, since).commit(
                until, events, rejects, buffer.last_record, buffer.first_record
            )
        except Fenced as error:
            log.error("%s[%d] batch %d..%d dropped: %s", self.topic, partition, buffer.start, buffer.last, error)
            self._resync(partition)
            return
        identity = log_id(buffer.first_record) if buffer.start == 0 else None
        manifest = replace(
            owned.manifest,
            next_offset=until.next_offset,
            last_record=buffer.last_record,
            log_ids={**owned.manifest.log_ids, str(buffer.epoch): identity} if identity else owned.manifest.log_ids,
        )
        files = events["event_date"].n_unique() + (1 if rejects.height else 0)
        owned.manifest = manifest
        owned.buffer = Buffer(epoch=manifest.epoch, start=manifest.next_offset, opened_at=time.monotonic())
        if events.height:
            newest = events["occurred_at"].max()
            latest = arrived_by(newest if isinstance(newest, datetime) else None, ingested_at)
            if latest is not None:
                owned.watermark = latest if owned.watermark is None else max(owned.watermark, latest)
        owned.counters.commit(time.monotonic() - started, buffer.last_record.get("timestamp"))
        self.loop.commit(partition, manifest.next_offset)
        self.totals.messages += buffer.messages
        self.totals.events += events.height
        self.totals.rejects += rejects.height
        self.totals.files += files
        self.totals.batches += 1
        log.info(
            "%s[%d] offsets %d..%d published: %d events, %d rejects, %d files; resume at %d",
            self.topic,
            partition,
            buffer.start,
            buffer.last,
            events.height,
            rejects.height,
            files,
            manifest.next_offset,
        )
        self._write_status(partition, force=True)

    def _resync(self, partition: int) -> None:
        """Drop what is buffered and continue from where the tables say the partition stands."""
        owned = self.owned[partition]
        owned.manifest = self.store.read_manifest(partition)
        owned.buffer = Buffer(epoch=owned.manifest.epoch, start=owned.manifest.next_offset, opened_at=time.monotonic())
        self._seek_to_resume(TopicPartition(self.topic, partition), owned)

    # progress

    def _consumed_to_end(self, partition: int) -> bool:
        end = self.loop.end_offset(partition)
        return end is not None and self.owned[partition].position >= end

    def caught_up(self, partition: int) -> bool:
        return self._consumed_to_end(partition) and self.owned[partition].buffer.empty

    def _write_status(self, partition: int, force: bool = False) -> None:
        owned = self.owned.get(partition)
        if owned is None:
            return
        now = time.monotonic()
        if not force and now - owned.status_written < STATUS_EVERY_SECONDS:
            return
        if self.caught_up(partition):
            owned.caught_up_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        owned.status_written = now
        self.store.write_status(
            partition,
            {
                "topic": self.topic,
                "partition": partition,
                "topic_partitions": self.loop.partition_count(),
                "epoch": owned.manifest.epoch,
                "next_offset": owned.manifest.next_offset,
                "published_offset": owned.manifest.next_offset - 1,
                "read_offset": owned.position,  # read from Kafka; buffered up to here
                "end_offset": self.loop.end_offset(partition),
                "watermark": owned.watermark,
                "caught_up_at": owned.caught_up_at,
                "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "counters": owned.counters.as_dict(),
            },
        )

    # rebalances (the loop calls these from inside poll)

    def revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            if tp.partition in self.owned:
                self._publish(tp.partition)
                self._write_status(tp.partition, force=True)
                del self.owned[tp.partition]
                log.info("%s[%d] revoked", self.topic, tp.partition)

    def assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            try:
                self._take(tp)
            except LambdaflowError as error:  # a damaged manifest: raised by run(), not in a callback
                self.loop.fail(error)

    def _take(self, tp: TopicPartition) -> None:
        self.store.take_status(tp.partition)
        manifest = self.store.read_manifest(tp.partition)
        previous = previous_status(self.store, tp.partition)
        owned = OwnedPartition(
            manifest=manifest,
            buffer=Buffer(epoch=manifest.epoch, start=manifest.next_offset, opened_at=time.monotonic()),
            position=manifest.next_offset,
            watermark=arrived_by(previous.get("watermark"), datetime.now(UTC)),
            caught_up_at=previous.get("caught_up_at"),
        )
        self.owned[tp.partition] = owned
        log.info(
            "%s[%d] assigned: epoch %d, resuming at offset %d",
            self.topic,
            tp.partition,
            manifest.epoch,
            manifest.next_offset,
        )
        if self._same_log(tp.partition, manifest) is False:
            self._start_new_epoch(tp, owned, f"the record at offset {manifest.next_offset - 1} is not the one archived")
        else:
            self._seek_to_resume(tp, owned)

    def _seek_to_resume(self, tp: TopicPartition, owned: OwnedPartition) -> None:
        owned.position = owned.manifest.next_offset
        self.loop.seek(tp, owned.position)
