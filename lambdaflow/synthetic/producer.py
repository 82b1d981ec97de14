"""Send synthetic events to Kafka: the library behind `lambdaflow produce`."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from lambdaflow.core.errors import LambdaflowError
from lambdaflow.kafka import clients
from lambdaflow.synthetic import generator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Summary:
    topic: str
    seed: int
    messages: int
    events: int
    duplicates: int
    malformed: int
    out_of_order: int
    late: int
    events_per_date: dict[str, int]
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            **self.__dict__,
            "seconds": round(self.seconds, 3),
            "messages_per_second": round(self.messages / self.seconds) if self.seconds > 0 else None,
        }


class RateLimiter:
    """Paces calls to at most ``rate`` per second (None: no limit)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and rate <= 0:
            raise LambdaflowError(f"--rate must be above 0, not {rate}")
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._next = clock()

    def time_to_next(self) -> float:
        """Seconds until :meth:`wait` would return at once."""
        return max(0.0, self._next - self._clock()) if self._interval else 0.0

    def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now - 1.0) + self._interval


def produce(
    bootstrap: str,
    topic: str,
    partitions: int,
    options: generator.Options,
    rate: float | None = None,
    on_progress: Callable[[int, int], None] = lambda sent, total: None,
) -> Summary:
    """Generate the plan for ``options`` and send it; returns once every message is acknowledged."""
    plan = generator.generate(options)
    clients.ensure_topic(bootstrap, topic, partitions)
    producer = clients.producer(bootstrap)
    limiter = RateLimiter(rate)
    failures: list[BaseException] = []
    started = time.monotonic()
    total = len(plan.messages)
    try:
        for sent, message in enumerate(plan.messages, start=1):
            limiter.wait()
            future = producer.send(topic, key=message.key, value=message.value)
            future.add_errback(failures.append)
            if sent % 1000 == 0 or sent == total:
                on_progress(sent, total)
            if failures:
                break
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise LambdaflowError(f"Kafka rejected a message: {failures[0]}")
    counts = plan.counts
    return Summary(
        topic=topic,
        seed=options.seed,
        messages=total,
        events=counts["events"],
        duplicates=counts["duplicates"],
        malformed=counts["malformed"],
        out_of_order=plan.out_of_order,
        late=plan.late,
        events_per_date=dict(sorted(plan.events_per_date.items())),
        seconds=time.monotonic() - started,
    )


LIVE_PROGRESS_EVERY_SECONDS = 30.0


def produce_live(
    bootstrap: str,
    topic: str,
    partitions: int,
    seed: int,
    rate: float,
    stop: threading.Event,
) -> Summary:
    """Send valid events stamped with the current time at ``rate`` per second until ``stop`` is set.

    Each event is drawn just before it is sent, so its occurred_at is the moment
    it leaves, as a live application's would be. Returns once every message sent
    is acknowledged.
    """
    clients.ensure_topic(bootstrap, topic, partitions)
    producer = clients.producer(bootstrap)
    events = generator.live(seed, events_per_day=rate * 86_400)
    limiter = RateLimiter(rate)
    failures: list[BaseException] = []
    per_date: Counter = Counter()
    started = last_report = time.monotonic()
    log.info("live: sending to %s", topic)
    try:
        while not stop.is_set() and not failures:
            _pace(limiter, stop)
            if stop.is_set():
                break
            message = next(events)
            producer.send(topic, key=message.key, value=message.value).add_errback(failures.append)
            per_date[message.event_date.isoformat() if message.event_date else "unknown"] += 1
            if time.monotonic() - last_report >= LIVE_PROGRESS_EVERY_SECONDS:
                last_report = time.monotonic()
                log.info("live: %d events sent to %s", sum(per_date.values()), topic)
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise LambdaflowError(f"Kafka rejected a message: {failures[0]}")
    sent = sum(per_date.values())
    return Summary(
        topic=topic,
        seed=seed,
        messages=sent,
        events=sent,
        duplicates=0,
        malformed=0,
        out_of_order=0,
        late=0,
        events_per_date=dict(sorted(per_date.items())),
        seconds=time.monotonic() - started,
    )


def _pace(limiter: RateLimiter, stop: threading.Event) -> None:
    """Wait for the next send slot, but never more than a tenth of a second past a stop request."""
    while not stop.is_set():
        wait = limiter.time_to_next()
        if wait <= 0:
            limiter.wait()
            return
        stop.wait(min(wait, 0.1))
