"""The stream worker's command, as `lambdaflow stream` runs it."""

from __future__ import annotations

import logging
import threading
import time

from lambdaflow.core.config import Settings
from lambdaflow.kafka.loop import hand_the_interpreter_over_often, keep_heap_off_collections
from stream_worker.replay import replay as replay_log
from stream_worker.worker import StreamWorker

log = logging.getLogger(__name__)


def stream(config: Settings, bootstrap: str, stop: threading.Event, until_idle: bool, replay: bool) -> dict:
    """Count until ``stop`` (or until caught up), after a replay when asked; the summary it prints."""
    started = time.monotonic()
    replayed = None
    if replay:
        replayed = replay_log(bootstrap, config.data_dir, config.topic, stop).as_dict()
        if until_idle or stop.is_set():
            return {"topic": config.topic, "replayed": replayed, "seconds": round(time.monotonic() - started, 3)}
    worker = StreamWorker(bootstrap, config.data_dir, config.topic, retention_days=config.speed_retention_days)
    log.info("counting %s from %s into %s", config.topic, bootstrap, worker.paths.root)
    keep_heap_off_collections()
    hand_the_interpreter_over_often()
    totals = worker.run(stop, until_idle=until_idle)
    log.info(
        "counted %d messages: %d new events, %d rejects, in %d commits",
        totals.messages,
        totals.new_events,
        totals.rejects,
        totals.commits,
    )
    summary: dict[str, object] = {
        "topic": config.topic,
        **totals.as_dict(),
        "seconds": round(time.monotonic() - started, 3),
        "first_message_after": worker.loop.first_message_after(started),
    }
    return summary if replayed is None else {**summary, "replayed": replayed}
