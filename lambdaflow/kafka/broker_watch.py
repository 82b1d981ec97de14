"""What a worker says while its broker is away.

kafka-python reconnects by itself, waiting longer after each failed attempt
(``reconnect_backoff_ms`` doubling up to ``reconnect_backoff_max_ms``, set in
clients.py), and it logs every failed attempt from several of its modules. A
worker says it once instead: a warning when the broker stops answering, another
every 30 s while it stays away, and one line when it answers again. Meanwhile
the client's own connection errors are dropped, unless the command runs with
``-v``, which shows them all.

The watch probes with a TCP connect: refused at once by a host whose broker
died, answered by a live one. It probes when the client logs a warning or an
error, and while the broker is away, on the same doubling schedule as the client
(1 s, 2 s, ... up to 5 s). It also probes at once when the client shows it got
through (a rebalance callback runs), so that "answers again" comes before the
lines the rejoin brings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lambdaflow.kafka import clients

log = logging.getLogger(__name__)

REPORT_EVERY_SECONDS = 30.0
MAX_PROBE_INTERVAL = clients.RECONNECT_BACKOFF_MAX_MS / 1000
PROBE_AT_MOST_EVERY = 1.0  # while the broker answers: however many client errors arrive


class BrokerWatch:
    def __init__(
        self,
        bootstrap: str,
        who: str,
        clock: Callable[[], float] = time.monotonic,
        reachable: Callable[[], bool] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.who = who
        self.away_since: float | None = None
        self.departures = 0  # how many times the broker went away
        self.quieted = 0
        self._clock = clock
        self._reachable = reachable or (lambda: clients.broker_answers(bootstrap, timeout=1.0))
        self._lock = threading.Lock()
        self._next_probe = 0.0
        self._interval = 1.0
        self._last_report = 0.0
        self._filter = _QuietWhileAway(self)

    def check(self) -> None:
        """From the worker's loop: while the broker is away, probe when the schedule says so."""
        with self._lock:
            if self.away_since is not None and self._clock() >= self._next_probe:
                self._probe()

    def client_got_through(self) -> None:
        """The client has just heard from the broker (a rebalance callback runs): if the broker was away,
        say it answers again now, before the callback's own lines, not at the next scheduled probe."""
        with self._lock:
            if self.away_since is not None:
                self._probe()

    def client_complained(self) -> bool:
        """The client logged a warning or an error: is the broker away (so the line is noise)?"""
        with self._lock:
            if self._clock() >= self._next_probe:
                self._probe()
            return self.away_since is not None

    def install(self) -> BrokerWatch:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._filter)
        return self

    def close(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._filter)

    def _probe(self) -> None:
        now = self._clock()
        answers = self._reachable()
        if answers and self.away_since is not None:
            log.info(
                "%s: the broker at %s answers again after %.0f s away (%d client errors not shown); "
                "resuming where the work stopped",
                self.who,
                self.bootstrap,
                now - self.away_since,
                self.quieted,
            )
            self.away_since, self.quieted, self._interval = None, 0, 1.0
        elif not answers and self.away_since is None:
            self.away_since = self._last_report = now
            self.departures += 1
            log.warning(
                "%s: the broker at %s does not answer; retrying with backoff (up to %.0f s apart) and "
                "resuming where the work stopped once it is back. Nothing is lost: the log and the "
                "consumed offsets stay with the broker and our files.",
                self.who,
                self.bootstrap,
                clients.RECONNECT_BACKOFF_MAX_MS / 1000,
            )
        elif not answers and self.away_since is not None and now - self._last_report >= REPORT_EVERY_SECONDS:
            self._last_report = now
            log.warning(
                "%s: the broker at %s is still away (%.0f s); still retrying",
                self.who,
                self.bootstrap,
                now - self.away_since,
            )
        if self.away_since is None:
            self._next_probe = now + PROBE_AT_MOST_EVERY
        else:
            self._next_probe = now + self._interval
            self._interval = min(self._interval * 2, MAX_PROBE_INTERVAL)


class _QuietWhileAway(logging.Filter):
    """Drops kafka-python's warnings and errors while the broker is away, unless logging is at debug level."""

    def __init__(self, watch: BrokerWatch) -> None:
        super().__init__()
        self.watch = watch

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka") or record.levelno < logging.WARNING:
            return True
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
        if record.exc_info and not verbose:
            # The client's own tracebacks (a socket reset as the broker leaves, logged before the
            # probe can tell the broker is gone) say nothing a user can act on: its line stays.
            record.exc_info, record.exc_text = None, None
        if not self.watch.client_complained():
            return True
        self.watch.quieted += 1
        return verbose
