"""Deterministic synthetic events for demos and tests.

The same options and seed give the same messages in the same order. Events are
spread over the UTC days ``until.date() - days`` to ``until`` (so ``--days 7``
is a week of history plus today so far), sent roughly in time order, with
optional duplicates, local disorder, late arrivals and malformed messages.

:func:`live` draws the same kind of valid events, stamped with the current
time, for as long as it is asked: the steady feed of a running stack.

Nothing in the pipeline depends on this module: its messages follow the
contract of DESIGN.md and nothing else.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

EVENT_TYPE_WEIGHTS = {"signup": 5, "login": 20, "page_view": 60, "order": 15}
COUNTRY_WEIGHTS = {"US": 30, "DE": 15, "IN": 15, "BR": 10, "GB": 10, "JP": 8, "FR": 7, None: 5}
# Offsets a producer in that place might write occurred_at in.
UTC_OFFSETS = ("Z", "+00:00", "+01:00", "+05:30", "+09:00", "-03:00", "-08:00", "+0545", "-0930")
# How far a displaced (out-of-order) message moves back in the send order.
DISORDER_WINDOW = 500
# Drawing a user population takes time in proportion to its size; a live feed
# at a high rate needs no more users than this to look real.
LIVE_MAX_USERS = 100_000

# One malformed message of each kind, in turn; the name is the reason the
# contract gives it.
MALFORMED_KINDS = (
    "not_json",
    "not_utf8",
    "not_an_object",
    "empty_object",
    "missing_event_id",
    "event_id_is_integer",
    "unknown_event_type",
    "empty_user_id",
    "user_id_not_key",
    "missing_key",
    "occurred_at_no_offset",
    "occurred_at_unparseable",
    "occurred_at_after_kafka_timestamp",
    "bad_country",
    "amount_cents_is_string",
    "amount_cents_is_float",
    "amount_cents_is_boolean",
    "negative_amount_cents",
    "missing_amount_cents",
    "tombstone",
    "value_too_large",
)


@dataclass(frozen=True)
class Options:
    days: int
    events_per_day: int
    seed: int
    until: datetime
    duplicates: float = 0.0
    out_of_order: float = 0.0
    late: float = 0.0
    malformed: float = 0.0

    def __post_init__(self) -> None:
        if self.days < 0:
            raise ValueError("days must be >= 0")
        if self.events_per_day < 0:
            raise ValueError("events per day must be >= 0")
        for name in ("duplicates", "out_of_order", "late", "malformed"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be a share between 0 and 1, not {share}")
        if self.until.tzinfo is None:
            raise ValueError("until must carry a time zone")


@dataclass(frozen=True)
class Message:
    key: bytes | None
    value: bytes | None
    kind: str
    """event, duplicate, or the malformed kind (the reason the contract gives it)."""
    event_date: date | None = None


@dataclass
class Plan:
    """What :func:`generate` produced: the messages and their tally."""

    messages: list[Message]
    events_per_date: Counter = field(default_factory=Counter)
    late: int = 0
    out_of_order: int = 0

    @property
    def counts(self) -> Counter:
        kinds = Counter(m.kind for m in self.messages)
        return Counter(
            events=kinds["event"],
            duplicates=kinds["duplicate"],
            malformed=sum(n for kind, n in kinds.items() if kind not in ("event", "duplicate")),
        )


def generate(options: Options) -> Plan:
    rng = random.Random(options.seed)
    until = options.until.astimezone(UTC)
    start = datetime.combine(until.date() - timedelta(days=options.days), datetime.min.time(), UTC)
    users = _Users(rng, population=max(20, options.events_per_day // 4))

    events: list[tuple[datetime, Message]] = []
    sequence = 0
    day_start = start
    while day_start < until:
        day_end = min(day_start + timedelta(days=1), until)
        count = round(options.events_per_day * (day_end - day_start) / timedelta(days=1))
        span = (day_end - day_start).total_seconds()
        for offset_s in sorted(rng.random() * span for _ in range(count)):
            occurred_at = day_start + timedelta(seconds=offset_s)
            event_id = f"evt-{options.seed}-{sequence:09d}"
            events.append((occurred_at, _event(rng, users, event_id, occurred_at)))
            sequence += 1
        day_start = day_end

    plan = Plan(messages=[])
    for occurred_at, _ in events:
        plan.events_per_date[occurred_at.date().isoformat()] += 1
    ordered = [message for _, message in events]
    ordered, plan.late = _delay(rng, ordered, options.late)
    ordered, plan.out_of_order = _disorder(rng, ordered, options.out_of_order)
    ordered = _duplicate(rng, ordered, options.duplicates)
    plan.messages = _add_malformed(rng, ordered, options.malformed, until)
    return plan


def live(seed: int, events_per_day: float, clock: Callable[[], datetime] | None = None) -> Iterator[Message]:
    """Valid events stamped with the time they are drawn, without end: `lambdaflow produce --live`.

    Users and event types are drawn as in :func:`generate` (a population of a
    quarter of a day's events, at most LIVE_MAX_USERS). Event ids carry the
    moment the stream began, so a restarted live producer never repeats an id an
    earlier one sent: the pipeline would count such events as duplicates. The
    users are drawn here, before the first event is asked for.
    """
    clock = clock or (lambda: datetime.now(UTC))
    rng = random.Random(seed)
    users = _Users(rng, population=min(LIVE_MAX_USERS, max(20, round(events_per_day) // 4)))
    run = f"live{int(clock().timestamp() * 1000):x}"
    return (
        _event(rng, users, f"evt-{seed}-{run}-{sequence:09d}", clock().astimezone(UTC))
        for sequence in itertools.count()
    )


class _Users:
    def __init__(self, rng: random.Random, population: int) -> None:
        countries = list(COUNTRY_WEIGHTS)
        homes = rng.choices(countries, weights=list(COUNTRY_WEIGHTS.values()), k=population)
        self._rng = rng
        self._travel_to = [c for c in countries if c]
        self._ids = [f"user-{i:06d}" for i in range(population)]
        self._home = homes
        self._offset = [_utc_offset(rng.choice(UTC_OFFSETS)) for _ in range(population)]

    def pick(self) -> tuple[str, str | None, tuple[str, timedelta]]:
        # A skewed pick: a few users are far more active than the rest.
        i = int(len(self._ids) * self._rng.random() ** 2)
        country = self._home[i]
        if self._rng.random() < 0.02:
            country = self._rng.choice(self._travel_to)
        return self._ids[i], country, self._offset[i]


_EVENT_TYPES = list(EVENT_TYPE_WEIGHTS)
_EVENT_TYPE_CUMULATIVE = list(itertools.accumulate(EVENT_TYPE_WEIGHTS.values()))


def _event(rng: random.Random, users: _Users, event_id: str, occurred_at: datetime) -> Message:
    user_id, country, utc_offset = users.pick()
    event_type = _EVENT_TYPES[bisect.bisect(_EVENT_TYPE_CUMULATIVE, rng.random() * _EVENT_TYPE_CUMULATIVE[-1])]
    # Built as text rather than with json.dumps: every value here is plain ASCII.
    fields = [
        f'"event_id":"{event_id}"',
        f'"event_type":"{event_type}"',
        f'"user_id":"{user_id}"',
        f'"occurred_at":"{_iso(occurred_at, utc_offset)}"',
    ]
    if country is not None:
        fields.append(f'"country":"{country}"')
    elif rng.random() < 0.5:
        fields.append('"country":null')  # absent and null both mean "ZZ"
    if event_type == "order":
        fields.append(f'"amount_cents":{rng.randint(99, 25_000)}')
    return Message(
        key=user_id.encode(),
        value=("{" + ",".join(fields) + "}").encode(),
        kind="event",
        event_date=occurred_at.date(),
    )


def _utc_offset(text: str) -> tuple[str, timedelta]:
    if text == "Z":
        return text, timedelta(0)
    sign = 1 if text[0] == "+" else -1
    digits = text[1:].replace(":", "")
    return text, sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))


def _iso(moment: datetime, utc_offset: tuple[str, timedelta]) -> str:
    """occurred_at as a producer in that UTC offset writes it, to the millisecond."""
    suffix, delta = utc_offset
    local = (moment + delta).replace(tzinfo=None)
    return local.isoformat(timespec="milliseconds") + suffix


def _delay(rng: random.Random, messages: list[Message], share: float) -> tuple[list[Message], int]:
    """Hold back a share of events and send them after everything else."""
    if share <= 0:
        return messages, 0
    on_time: list[Message] = []
    late: list[Message] = []
    for message in messages:
        (late if rng.random() < share else on_time).append(message)
    return on_time + late, len(late)


def _disorder(rng: random.Random, messages: list[Message], share: float) -> tuple[list[Message], int]:
    """Move a share of messages back by up to DISORDER_WINDOW places."""
    if share <= 0:
        return messages, 0
    places: list[float] = []
    for i in range(len(messages)):
        places.append(i - rng.randint(1, DISORDER_WINDOW) - 0.5 if rng.random() < share else i)
    moved = sum(1 for i, place in enumerate(places) if place != i)
    order = sorted(range(len(messages)), key=places.__getitem__)
    return [messages[i] for i in order], moved


def _duplicate(rng: random.Random, messages: list[Message], share: float) -> list[Message]:
    """Re-send a share of events up to 1000 places later, with the same key and bytes."""
    if share <= 0:
        return messages
    out: list[Message] = []
    pending: list[tuple[int, int, Message]] = []
    for i, message in enumerate(messages):
        out.append(message)
        if rng.random() < share:
            copy = Message(message.key, message.value, "duplicate", message.event_date)
            heapq.heappush(pending, (i + rng.randint(1, 1000), i, copy))
        while pending and pending[0][0] <= i:
            out.append(heapq.heappop(pending)[2])
    out.extend(message for _, _, message in sorted(pending))
    return out


def _add_malformed(rng: random.Random, messages: list[Message], share: float, until: datetime) -> list[Message]:
    if share <= 0:
        return messages
    out: list[Message] = []
    made = 0
    for message in messages:
        out.append(message)
        if rng.random() < share:
            kind = MALFORMED_KINDS[made % len(MALFORMED_KINDS)]
            out.append(malformed(kind, rng, until))
            made += 1
    return out


def malformed(kind: str, rng: random.Random, until: datetime) -> Message:
    """A message that breaks exactly one rule: the contract rejects it as ``kind``."""
    user_id = f"user-bad-{rng.randrange(1000):03d}"
    event = {
        "event_id": f"bad-{rng.getrandbits(48):012x}",
        "event_type": "order",
        "user_id": user_id,
        "occurred_at": (until - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "country": "DE",
        "amount_cents": 100,
    }
    key: bytes | None = user_id.encode()
    raw: bytes | None = None
    if kind == "not_json":
        raw = b'{"event_id": "oops", '
    elif kind == "not_utf8":
        raw = b'{"event_id": "\xff\xfe"}'
    elif kind == "not_an_object":
        raw = b'["signup", "order"]'
    elif kind == "empty_object":
        raw = b"{}"
    elif kind == "missing_event_id":
        del event["event_id"]
    elif kind == "event_id_is_integer":
        event["event_id"] = rng.randrange(10**9)
    elif kind == "unknown_event_type":
        event["event_type"] = "logout"
    elif kind == "empty_user_id":
        event["user_id"] = ""
        key = b""
    elif kind == "user_id_not_key":
        key = b"someone-else"
    elif kind == "missing_key":
        key = None
    elif kind == "occurred_at_no_offset":
        event["occurred_at"] = str(event["occurred_at"]).rstrip("Z")
    elif kind == "occurred_at_unparseable":
        event["occurred_at"] = "yesterday at noon"
    elif kind == "occurred_at_after_kafka_timestamp":
        event["occurred_at"] = "2099-01-01T00:00:00Z"
    elif kind == "bad_country":
        event["country"] = "Germany"
    elif kind == "amount_cents_is_string":
        event["amount_cents"] = "100"
    elif kind == "amount_cents_is_float":
        event["amount_cents"] = 100.5
    elif kind == "amount_cents_is_boolean":
        event["amount_cents"] = True
    elif kind == "negative_amount_cents":
        event["amount_cents"] = -100
    elif kind == "missing_amount_cents":
        del event["amount_cents"]
    elif kind == "tombstone":
        return Message(key=key, value=None, kind=kind)
    elif kind == "value_too_large":
        event["padding"] = "x" * (64 * 1024)
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    if raw is None:
        raw = json.dumps(event, separators=(",", ":")).encode()
    return Message(key=key, value=raw, kind=kind)
