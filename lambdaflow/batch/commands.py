"""The archiver's commands, as `lambdaflow archive` runs them."""

from __future__ import annotations

import logging
import threading
import time

from lambdaflow.batch.archiver import Archiver
from lambdaflow.batch.buffers import RollPolicy
from lambdaflow.batch.verify import verify
from lambdaflow.core.config import Settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.raw_store import RawStore
from lambdaflow.kafka.loop import hand_the_interpreter_over_often, keep_heap_off_collections

log = logging.getLogger(__name__)


def archive(config: Settings, bootstrap: str, stop: threading.Event, until_idle: bool) -> dict:
    """Archive until ``stop`` (or until caught up); the summary `lambdaflow archive` prints."""
    store = RawStore(config.data_dir, config.topic, config.storage)
    roll = RollPolicy(max_bytes=config.archive_roll_bytes, max_seconds=config.archive_roll_seconds)
    log.info("archiving %s from %s into %s", config.topic, bootstrap, store.tables.events_uri)
    started = time.monotonic()
    archiver = Archiver(bootstrap, store, roll)
    keep_heap_off_collections()
    hand_the_interpreter_over_often()
    totals = archiver.run(stop, until_idle=until_idle)
    resume = {str(p): m.next_offset for p, m in sorted(store.manifests().items())}
    log.info(
        "archived %d messages: %d events, %d rejects, in %d files (%d batches); resume offsets %s",
        totals.messages,
        totals.events,
        totals.rejects,
        totals.files,
        totals.batches,
        resume,
    )
    return {
        "topic": config.topic,
        **totals.as_dict(),
        "resume_offsets": resume,
        "seconds": round(time.monotonic() - started, 3),
        "first_message_after": archiver.loop.first_message_after(started),
    }


def verify_archive(config: Settings, bootstrap: str) -> list[dict]:
    """`archive --verify`: per partition, does the raw store hold exactly the log's valid messages?"""
    store = RawStore(config.data_dir, config.topic, config.storage)
    if not store.manifests():
        raise LambdaflowError(
            f"nothing archived for topic {config.topic} under {config.data_dir}: run `lambdaflow archive`"
        )
    return verify(bootstrap, store)
