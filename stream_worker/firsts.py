"""Each user-day's first event (per users metric): a log on disk, an index in memory.

A micro-batch must find its users among the user-days already seen without
reading the rest of the day. DuckDB offers no lookup that cheap: its index
costs about 75 bytes a row on disk, and an upsert through it still scans the
table (23 ms for 300 rows at 500k rows). So the state file holds only
``first_events``, an append-only log of each user-day's first event and of
every earlier event that later replaced it (out-of-order data), and
:class:`FirstSeen` keeps the current first event of each user-day in a Python
dict, read from the log when the state opens. A micro-batch looks up only its
own user-days; what changes is appended to the log in the micro-batch's
transaction and reaches the dict once that transaction has committed.

``first_counts`` (a temporary table, rebuilt at open) holds the users per
hour, country and metric that the user-days add up to, moved by each change,
so a snapshot adds up a few rows per hour instead of every user-day.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

import duckdb
import polars as pl

from lambdaflow.core.aggregate import FIRST_SEEN_SCHEMA

LOG_COLUMNS = ", ".join(FIRST_SEEN_SCHEMA.names())

SCHEMA = """
create table if not exists first_events (
    event_date date not null,
    user_id varchar not null,
    kind varchar not null,
    occurred_at timestamptz not null,
    kafka_offset bigint not null,
    event_hour timestamp not null,
    country varchar not null
);
create or replace temp table first_counts (
    event_hour timestamp not null,
    country varchar not null,
    kind varchar not null,
    users bigint not null,
    primary key (event_hour, country, kind)
);
"""

# More log rows than this many per user-day: rewrite the log at the next open.
_COMPACT_ABOVE = 1.25

Key = tuple[date, str, str]
"""(event_date, user_id, kind)"""
First = tuple[datetime, int, datetime, str]
"""(occurred_at, kafka_offset, event_hour, country)"""


class FirstSeen:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._firsts: dict[Key, First] = {}
        self._pending: dict[Key, First] = {}
        self._pending_drop: date | None = None
        self._load()

    def _load(self) -> None:
        """Read the log (a state that kept ``first_seen`` on disk, with its index, moves it to the log first)."""
        con = self._con
        con.begin()
        if con.execute("select 1 from duckdb_tables() where not temporary and table_name = 'first_seen'").fetchall():
            con.execute(f"create table first_events as select {LOG_COLUMNS} from first_seen").fetchall()
            con.execute("drop table first_seen").fetchall()
        con.execute(SCHEMA).fetchall()
        current = con.sql(f"""
            select {LOG_COLUMNS}
            from first_events
            qualify row_number() over (partition by event_date, user_id, kind order by occurred_at, kafka_offset) = 1
        """).pl()
        logged = con.execute("select count(*) from first_events").fetchall()[0][0]
        if logged > current.height * _COMPACT_ABOVE:
            con.register("current_firsts", current)
            con.execute("delete from first_events").fetchall()
            con.execute(f"insert into first_events select {LOG_COLUMNS} from current_firsts").fetchall()
            con.unregister("current_firsts")
        con.register("current_firsts", current)
        con.execute("""
            insert into first_counts select event_hour, country, kind, count(*) from current_firsts group by all
        """).fetchall()
        con.unregister("current_firsts")
        con.commit()
        self._firsts = dict(zip(_keys(current), _values(current), strict=True))

    def stored(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The stored first event of each user-day in ``keys`` that has one (FIRST_SEEN_SCHEMA)."""
        found = [(key, self._pending.get(key) or self._firsts.get(key)) for key in _keys(keys)]
        rows = [(*key, *first) for key, first in found if first is not None]
        return pl.DataFrame(rows, schema=FIRST_SEEN_SCHEMA, orient="row")

    def upsert(self, firsts: pl.DataFrame) -> None:
        """Keep the earlier of each user-day's stored first event and the one in ``firsts`` (by
        occurred_at, then offset), in the caller's transaction: log what changed and move its count.
        The index takes the changes at :meth:`committed`."""
        changed, replaced = [], []
        for index, (key, first) in enumerate(zip(_keys(firsts), _values(firsts), strict=True)):
            stored = self._pending.get(key) or self._firsts.get(key)
            if stored is None or first[:2] < stored[:2]:
                changed.append(index)
                self._pending[key] = first
                if stored is not None:
                    replaced.append((stored[2], stored[3], key[2]))
        if not changed:
            return
        con = self._con
        rows = firsts[changed]
        moved = pl.concat(
            [
                rows.group_by("event_hour", "country", "kind").agg(pl.len().cast(pl.Int64).alias("users")),
                pl.DataFrame(
                    replaced,
                    schema={"event_hour": pl.Datetime("us"), "country": pl.String, "kind": pl.String},
                    orient="row",
                )
                .group_by("event_hour", "country", "kind")
                .agg((-pl.len().cast(pl.Int64)).alias("users")),
            ]
        )
        con.register("changed_firsts", rows)
        con.register("moved_counts", moved)
        try:
            con.execute(f"insert into first_events select {LOG_COLUMNS} from changed_firsts").fetchall()
            con.execute("""
                insert into first_counts
                select event_hour, country, kind, sum(users) from moved_counts group by all
                on conflict (event_hour, country, kind) do update set users = first_counts.users + excluded.users
            """).fetchall()
            if replaced:  # only a replaced first event takes a count away
                con.execute("delete from first_counts where users = 0").fetchall()
        finally:
            con.unregister("changed_firsts")
            con.unregister("moved_counts")

    def committed(self) -> None:
        """The transaction of the upserts since the last call committed: the index takes them."""
        if self._pending_drop is not None:
            first_kept = self._pending_drop
            self._firsts = {key: first for key, first in self._firsts.items() if key[0] >= first_kept}
        self._firsts.update(self._pending)
        self.rolled_back()

    def rolled_back(self) -> None:
        self._pending.clear()
        self._pending_drop = None

    def drop_before(self, first_kept: date) -> None:
        """Forget the user-days before ``first_kept``, in the caller's transaction (the index at
        :meth:`committed`)."""
        con = self._con
        con.execute("delete from first_events where event_date < ?", [first_kept]).fetchall()
        con.execute("delete from first_counts where event_hour < ?", [first_kept]).fetchall()
        self._pending_drop = first_kept

    def kinds(self) -> set[str]:
        return {kind for (kind,) in self._con.execute("select distinct kind from first_counts").fetchall()}


def _keys(frame: pl.DataFrame) -> Iterable[Key]:
    return zip(frame["event_date"].to_list(), frame["user_id"].to_list(), frame["kind"].to_list(), strict=True)


def _values(frame: pl.DataFrame) -> Iterable[First]:
    return zip(
        frame["occurred_at"].to_list(),
        frame["kafka_offset"].to_list(),
        frame["event_hour"].to_list(),
        frame["country"].to_list(),
        strict=True,
    )


USERS_SQL = """
    select event_hour, country, kind, users from first_counts
    union all
    select realtime_hour, realtime_country, kind, 1 from late_firsts where realtime_hour is not null
"""
"""Users per hour, country and metric: each user-day at its first event's hour, and one whose first
event is late and not followed by a read one also at its first realtime event's (see attribution)."""
