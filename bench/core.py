"""What every benchmark section shares: sizes, the run's context, result rows and statistics."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is. Full mode is what the targets are judged on; quick mode only
    proves that the code still runs end to end."""

    repetitions: int
    ingest_events: int
    freshness_rate: float
    freshness_seconds: float
    batch_events: tuple[int, ...]
    """Events in a day, smallest first; the last size is the one measured A/B, repeatedly."""
    queries_per_block: int
    backfill_days: int
    backfill_events_per_day: int
    freshness_history_events: int
    """A day of history counted into the stream worker's state before freshness is measured."""
    growth_events: int
    """The events counted on an empty state and on top of ``growth_history_events`` of the same day."""
    growth_history_events: int
    peer_events: int
    """Events (before duplicates) that lambdaflow and the quixstreams peer count."""

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            repetitions=3,
            ingest_events=1_000_000,
            freshness_rate=20_000,
            freshness_seconds=300,
            batch_events=(1_000_000, 5_000_000, 10_000_000),
            queries_per_block=80,
            backfill_days=30,
            backfill_events_per_day=20_000,
            freshness_history_events=6_000_000,
            growth_events=300_000,
            growth_history_events=6_000_000,
            peer_events=500_000,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            repetitions=1,
            ingest_events=300_000,
            freshness_rate=2_000,
            freshness_seconds=5,
            batch_events=(20_000, 50_000),
            queries_per_block=20,
            backfill_days=2,
            backfill_events_per_day=2_000,
            freshness_history_events=100_000,
            growth_events=100_000,
            growth_history_events=1_000_000,
            peer_events=100_000,
        )


@dataclass
class Context:
    """Where a run writes, how big it is, and the clean environment its children start from."""

    sizes: Sizes
    quick: bool
    out: Path
    work: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, sizes: Sizes, quick: bool, out: Path, work: Path) -> Context:
        # Children must not pick up a Kafka, data directory or Airflow the caller's shell points at.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_", "AIRFLOW", "DBT_"))}
        env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
        env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
        return cls(sizes, quick, out, work, env)

    def folder(self, *parts: str) -> Path:
        path = self.work.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Row:
    """One line of the summary: a figure, what it is compared with, and the target it is judged by."""

    id: str
    what: str
    figure: float | None
    unit: str
    peer: str
    peer_figure: float | None
    ratio: float | None
    target: str | None
    met: bool | None
    why: str = ""
    """When the target is missed (or a figure is only derived), the reason in a sentence."""
    detail: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Section:
    """One numbered part of the report: its rows, the Markdown that explains them, and its plots."""

    number: int
    title: str
    rows: list[Row]
    text: str
    details: dict = field(default_factory=dict)
    plots: list[Callable[[Path], Path]] = field(default_factory=list)
    seconds: float = 0.0
    """How long the section took, set by the runner."""


MIN_COUNTING_SECONDS = 1.0
"""A run whose counting took less than this (its seconds less its fixed part: start-up, group join) is
within the noise of that fixed part: a row built on it fails as too short to judge."""


def too_short(seconds: Iterable[float]) -> bool:
    return min(seconds) < MIN_COUNTING_SECONDS


TOO_SHORT = (
    f"a run counted for less than {MIN_COUNTING_SECONDS:g} s beyond its fixed part, within the noise of that "
    "part, so the rates cannot be judged at these sizes"
)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``share`` of the values at or below."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(round(share * len(ordered), 9)))
    return ordered[min(rank, len(ordered)) - 1]


def alternate(order: Sequence[str], repetition: int) -> list[str]:
    """The order of A, B (, C) in one repetition, rotated each time so no variant always goes first."""
    shift = repetition % len(order)
    return list(order[shift:]) + list(order[:shift])
