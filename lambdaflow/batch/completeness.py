"""Is a UTC day (or how much of today) complete in the raw store? (invariant 6)

The archivers report, per partition, how far event time has passed and when
they last caught up with the log's end; a day is complete once every partition
of the topic is complete past its end plus the allowed lateness.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.days import midnight
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.raw_store import RawStore

DAY = timedelta(days=1)


class DayNotComplete(LambdaflowError):
    """The archiver has not yet seen the end of the day on every partition."""


@dataclass(frozen=True)
class Completeness:
    complete_until: datetime | None
    """Every event before this instant has been archived on every partition (None: nothing yet)."""
    partitions: dict[int, str]
    """Per partition, what the archiver has reported."""

    def day_is_complete(self, day: date) -> bool:
        return self.complete_until is not None and self.complete_until >= midnight(day) + DAY

    def explain(self, day: date, lateness: timedelta) -> str:
        detail = "; ".join(f"partition {p}: {text}" for p, text in sorted(self.partitions.items()))
        return (
            f"day {day} is not complete yet: every partition's archiver must see event time pass "
            f"{midnight(day) + DAY + lateness:%Y-%m-%d %H:%M} UTC, or catch up after then "
            f"({detail or 'no archiver has reported yet'})"
        )


def completeness(settings: Settings) -> Completeness:
    """How far the raw store is complete, from the archiver's status files.

    A partition is complete up to its event-time watermark less the allowed
    lateness, or up to the wall-clock time it last caught up with the log's end
    less the allowed lateness, whichever is later. Every partition of the topic
    counts, as the broker reported them to the archivers, not a configured number.
    """
    store = RawStore(settings.data_dir, settings.topic, settings.storage)
    statuses = store.statuses(fallback=settings.partitions)
    reported: dict[int, str] = {}
    horizons = []
    for partition, status in statuses.items():
        if status is None:
            reported[partition] = "not archived yet"
            continue
        marks = [datetime.fromisoformat(v) for v in (status.get("watermark"), status.get("caught_up_at")) if v]
        if status.get("updated_at"):  # no mark runs ahead of the report that holds it (invariant 6)
            marks = [min(mark, datetime.fromisoformat(status["updated_at"])) for mark in marks]
        if not marks:
            reported[partition] = "no event time seen, never caught up"
            continue
        horizon = max(marks) - settings.allowed_lateness
        horizons.append(horizon)
        reported[partition] = f"complete until {horizon:%Y-%m-%d %H:%M} UTC"
    complete_until = min(horizons) if len(horizons) == len(statuses) else None
    return Completeness(complete_until, reported)


def require_complete(settings: Settings, day: date) -> None:
    state = completeness(settings)
    if not state.day_is_complete(day):
        raise DayNotComplete(state.explain(day, settings.allowed_lateness))


def complete_hours_of(settings: Settings, day: date) -> datetime:
    """The end of the last complete hour of ``day`` (its start when none is complete)."""
    state = completeness(settings)
    start = midnight(day)
    if state.complete_until is None or state.complete_until <= start:
        return start
    end = min(state.complete_until, start + DAY)
    return end.replace(minute=0, second=0, microsecond=0)


def hours_to_build(settings: Settings, day: date) -> datetime:
    """Where a manual run for ``day`` builds to: the end of its complete hours, and never short of the
    boundary. Hours before the boundary are served by the batch alone, so a rebuild with a larger
    allowed lateness (or a clock that went back) must still cover them, or no layer would serve them."""
    until = complete_hours_of(settings, day)
    boundary = read_manifest(settings.documents).get("boundary")
    if boundary:
        until = max(until, min(datetime.fromisoformat(boundary), midnight(day) + DAY))
    return until


def require_complete_hours(settings: Settings, day: date) -> datetime:
    """Where a manual run for ``day`` builds to (:func:`hours_to_build`); DayNotComplete when no hour is."""
    until = hours_to_build(settings, day)
    if until <= midnight(day):
        explained = completeness(settings).explain(day, settings.allowed_lateness)
        raise DayNotComplete(f"no hour of {day} is complete yet; {explained}")
    return until
