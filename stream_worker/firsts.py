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

from datetime import date

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

Day = tuple[date, str]
"""(event_date, kind): the user-days of one users metric on one day."""
First = tuple[int, int, str]
"""A user-day's first event: (occurred_at in microseconds since the epoch, kafka_offset, country)."""
_KEYS = ["event_date", "user_id", "kind"]


class FirstSeen:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._firsts: dict[Day, dict[str, First]] = {}
        """Per day and metric, per user: the first event (about 400 bytes per user-day in all)."""
        self._pending: dict[Day, dict[str, First]] = {}
        """Per day and metric, per user: the first events changed in the open transaction."""
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
        logged = con.sql(f"select {LOG_COLUMNS} from first_events").pl()
        current = logged.sort("occurred_at", "kafka_offset").unique(_KEYS, keep="first")
        if logged.height > current.height * _COMPACT_ABOVE:
            con.register("current_firsts", current)
            con.execute("delete from first_events").fetchall()
            con.execute(f"insert into first_events select {LOG_COLUMNS} from current_firsts").fetchall()
            con.unregister("current_firsts")
        con.register("loaded_counts", current.group_by("event_hour", "country", "kind").agg(pl.len().alias("users")))
        con.execute("insert into first_counts by name select * from loaded_counts").fetchall()
        con.unregister("loaded_counts")
        con.commit()
        with_micros = current.with_columns(pl.col("occurred_at").dt.epoch("us"))
        for (day, kind), users in with_micros.partition_by("event_date", "kind", as_dict=True).items():
            self._firsts[(day, kind)] = dict(
                zip(
                    users["user_id"].to_list(),
                    zip(
                        users["occurred_at"].to_list(),
                        users["kafka_offset"].to_list(),
                        users["country"].to_list(),
                        strict=True,
                    ),
                    strict=True,
                )
            )

    def _get(self, day: Day, user: str) -> First | None:
        pending = self._pending.get(day)
        first = pending.get(user) if pending else None
        if first is not None:
            return first
        users = self._firsts.get(day)
        return users.get(user) if users is not None else None

    def stored(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The stored first event of each user-day in ``keys`` that has one (FIRST_SEEN_SCHEMA)."""
        rows = []
        for day, user, kind in zip(*(keys[c].to_list() for c in _KEYS), strict=True):
            first = self._get((day, kind), user)
            if first is not None:
                rows.append((day, user, kind, *first))
        schema = pl.Schema(
            {**{c: FIRST_SEEN_SCHEMA[c] for c in _KEYS}, "micros": pl.Int64(), "kafka_offset": pl.Int64()}
        )
        schema["country"] = pl.String()
        frame = pl.DataFrame(rows, schema=schema, orient="row")
        return _with_times(frame).select(FIRST_SEEN_SCHEMA.names())

    def upsert(self, firsts: pl.DataFrame) -> None:
        """Keep the earlier of each user-day's stored first event and the one in ``firsts`` (by
        occurred_at, then offset), in the caller's transaction: log what changed and move its count.
        The index takes the changes at :meth:`committed`."""
        changed: list[int] = []
        replaced: list[tuple[int, str, str]] = []
        numbered = firsts.with_row_index("row").with_columns(pl.col("occurred_at").dt.epoch("us").alias("micros"))
        for (day, kind), group in numbered.partition_by("event_date", "kind", as_dict=True).items():
            self._upsert_day((day, kind), group, changed, replaced)
        if not changed:
            return
        con = self._con
        rows = firsts[changed]
        taken_schema = {"micros": pl.Int64, "country": pl.String, "kind": pl.String}
        taken = pl.DataFrame(replaced, schema=taken_schema, orient="row")
        moved = pl.concat(
            [
                rows.group_by("event_hour", "country", "kind").agg(pl.len().cast(pl.Int64).alias("users")),
                _with_times(taken)
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

    def _upsert_day(
        self, day: Day, group: pl.DataFrame, changed: list[int], replaced: list[tuple[int, str, str]]
    ) -> None:
        """One day and metric of :meth:`upsert`: the rows (of ``firsts``) that change, and the first
        events they replace. The loop that runs once per user-day: a dict lookup or two, no more."""
        stored_users = self._firsts.get(day, {})
        earlier = self._pending.get(day)  # changed by an earlier upsert of the same transaction
        lookup = stored_users.get if not earlier else (lambda user: earlier.get(user) or stored_users.get(user))
        now: dict[str, First] = {}
        kind = day[1]
        columns = (group[c].to_list() for c in ("row", "user_id", "micros", "kafka_offset", "country"))
        for row, user, micros, offset, country in zip(*columns, strict=True):
            stored = lookup(user)
            if stored is None or micros < stored[0] or (micros == stored[0] and offset < stored[1]):
                changed.append(row)
                now[user] = (micros, offset, country)
                if stored is not None:
                    replaced.append((stored[0], stored[2], kind))
        if now:
            self._pending.setdefault(day, {}).update(now)

    def committed(self) -> None:
        """The transaction of the upserts since the last call committed: the index takes them."""
        if self._pending_drop is not None:
            first_kept = self._pending_drop
            self._firsts = {day: users for day, users in self._firsts.items() if day[0] >= first_kept}
        for day, users in self._pending.items():
            self._firsts.setdefault(day, {}).update(users)
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

    def user_days(self) -> int:
        return sum(len(users) for users in self._firsts.values())


def _with_times(frame: pl.DataFrame) -> pl.DataFrame:
    """``micros`` (since the epoch, UTC) as occurred_at and its naive UTC hour, event_hour."""
    moment = pl.from_epoch("micros", time_unit="us")
    return frame.with_columns(
        moment.dt.replace_time_zone("UTC").alias("occurred_at"), moment.dt.truncate("1h").alias("event_hour")
    )


USERS_SQL = """
    select event_hour, country, kind, users from first_counts
    union all
    select realtime_hour, realtime_country, kind, 1 from late_firsts where realtime_hour is not null
"""
"""Users per hour, country and metric: each user-day at its first event's hour, and one whose first
event is late and not followed by a read one also at its first realtime event's (see attribution)."""
