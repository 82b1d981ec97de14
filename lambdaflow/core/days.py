"""UTC days as users give them: `--from`/`--to`, `--date`, a DAG run's `ds` param.

Every door that takes a day parses it here, so each refuses the same inputs
with the same one-line message: anything but ``YYYY-MM-DD`` in ASCII digits,
a day the calendar does not have, and a day past the latest the door allows.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from lambdaflow.core.errors import InputError

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
QUERY_DAYS_AHEAD = 366
"""A query may reach this many days past today (UTC), no further: no event can be dated later than
an hour after its Kafka timestamp, so later days hold nothing, and 9999-12-31 is a typo, not a question."""


def midnight(day: date) -> datetime:
    """Midnight UTC starting ``day``, timezone-aware."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def today() -> date:
    return datetime.now(UTC).date()


def parse_day(
    text: object, what: str | None = None, *, latest: date | None = None, latest_why: str | None = None
) -> date:
    """A UTC day as YYYY-MM-DD; anything else is an :class:`InputError` with one clear line.

    ``what`` names the input in the message (``--date``, ``ds``); ``latest`` is the last day
    allowed, and ``latest_why`` says why (default: it is today).
    """
    prefix = f"{what} " if what else ""
    if not isinstance(text, str) or not _ISO_DATE.fullmatch(text.strip()):
        raise InputError(f"{prefix}{_shown(text)} is not a date: use YYYY-MM-DD, e.g. 2026-11-26")
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"{prefix}{_shown(text)} is not a date of the calendar") from None
    if latest is not None and day > latest:
        raise InputError(f"{prefix}{day} is {latest_why or f'in the future (today is {latest} UTC)'}")
    return day


def latest_query_day() -> date:
    return today() + timedelta(days=QUERY_DAYS_AHEAD)


def parse_query_day(text: str, what: str) -> date:
    """A day of a query's range: at most :data:`QUERY_DAYS_AHEAD` days past today."""
    latest = latest_query_day()
    return parse_day(
        text,
        what,
        latest=latest,
        latest_why=f"too far ahead: a query reaches at most {QUERY_DAYS_AHEAD} days past today, to {latest} (UTC)",
    )


def _shown(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."
