"""What a worker counted for one partition since it started: written into its status file every
second, read by `lambdaflow serve` for Prometheus (see :mod:`lambdaflow.serving.metrics`).

The counts start at zero when a worker process starts (the status file says which process and
when), as Prometheus counters do: a scraper sees the reset and carries on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class PartitionCounters:
    started_at: str = field(default_factory=now_iso)
    """When this process took the partition: the counts below start there."""
    messages: int = 0
    """Messages read from Kafka and handled (events and rejects)."""
    events: int = 0
    """Valid events among them."""
    rejects: dict[str, int] = field(default_factory=dict)
    """Messages that broke the contract, by reason."""
    batches: int = 0
    batch_seconds: float = 0.0
    """Micro-batches that held records of the partition, and the time each took from being handed
    to the worker to being done with (the stream worker: counted and published; the archiver: buffered)."""
    commits: int = 0
    commit_seconds: float = 0.0
    """Commits of the partition (the stream worker: the state transaction and snapshot; the
    archiver: a raw file and its manifest), and the time they took."""
    last_commit_at: str | None = None
    last_record_timestamp: str | None = None
    """The Kafka timestamp of the last record committed: with ``last_commit_at``, how long the newest
    committed event took from its producer to the committed state."""

    def count(self, messages: int = 0, events: int = 0, reasons: Iterable[str] = ()) -> None:
        self.messages += messages
        self.events += events
        for reason in reasons:
            self.rejects[reason] = self.rejects.get(reason, 0) + 1

    def batch(self, seconds: float) -> None:
        self.batches += 1
        self.batch_seconds += seconds

    def commit(self, seconds: float, last_record_ms: int | None) -> None:
        self.commits += 1
        self.commit_seconds += seconds
        self.last_commit_at = now_iso()
        if last_record_ms is not None and last_record_ms >= 0:
            self.last_record_timestamp = datetime.fromtimestamp(last_record_ms / 1000, UTC).isoformat(
                timespec="milliseconds"
            )

    def as_dict(self) -> dict:
        document = asdict(self)
        document["batch_seconds"] = round(self.batch_seconds, 6)
        document["commit_seconds"] = round(self.commit_seconds, 6)
        return document
