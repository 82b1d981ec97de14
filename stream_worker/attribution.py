"""Which hour the speed layer counts a user-day in, beside a batch that serves some hours (invariant 10).

A partition's state keeps each user-day's first event in ``first_seen`` (by
occurred_at, then offset): the hour of the users metrics, as the batch computes
it. The batch serves a prefix of each built day (``BatchHours``): the user-day is
the batch's when the day's build read one of the user's events in those hours,
and every other user-day must be counted in a realtime hour. Ranked by what the
batch made of it, an event is

* **read**: in a batch-served hour, read by the day's build (the batch counts the user-day);
* **realtime**: in an hour the speed layer serves;
* **late**: in a batch-served hour, not read by the build (nobody counts it until a rebuild does).

A user-day whose first event is realtime is counted there, and no event of it
lies in a batch-served hour. One whose first event is read is the batch's. Only
a user-day whose first event is late needs more: it is the batch's if any of its
events is read, else the speed layer's at its first realtime event (if it has
one). ``late_firsts`` keeps exactly those user-days, few (late data), with the
two facts; the snapshot counts their realtime event beside the first one, which
lies in an hour the speed layer does not serve. When a build reads more or the
boundary moves, :func:`follow` hands user-days to the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import polars as pl

from lambdaflow.core import aggregate
from lambdaflow.core.boundary import BatchHours

SCHEMA = """
create table if not exists late_firsts (
    event_date date not null,
    user_id varchar not null,
    kind varchar not null,
    first_offset bigint not null,
    first_hour timestamp not null,
    read boolean not null,
    realtime_occurred_at timestamptz,
    realtime_offset bigint,
    realtime_hour timestamp,
    realtime_country varchar,
    primary key (event_date, user_id, kind)
);
"""

# A row of `x` (with event_hour and kafka_offset, or the given columns) against its day in `d`.
_IS_BATCH_HOUR = "{hour} < d.served_until"
_IS_READ = "({hour} < d.served_until and {offset} < d.covered_end)"

_DAYS_SCHEMA = {"event_date": pl.Date(), "served_until": pl.Datetime("us"), "covered_end": pl.Int64()}


def batch_days(
    con: duckdb.DuckDBPyConnection, batch: BatchHours, partition: int, epoch: int, log: str | None, days: set
) -> pl.DataFrame:
    """Per day of ``days`` and of ``late_firsts``: the end of its batch-served hours and the offset
    below which its build read the partition, in the log counted (``log``, else its ``epoch``)."""
    held = {day for (day,) in con.execute("select distinct event_date from late_firsts").fetchall()}
    ordered = sorted(set(days) | held)
    return pl.DataFrame(
        {
            "event_date": ordered,
            "served_until": [batch.until(day) for day in ordered],
            "covered_end": [batch.covered_end(day, partition, epoch, log) for day in ordered],
        },
        schema=_DAYS_SCHEMA,
    )


def realtime_firsts(fresh: pl.DataFrame, days: pl.DataFrame, metrics) -> pl.DataFrame:
    """The micro-batch's first event per user-day among its events in hours the speed layer serves."""
    in_realtime_hours = (
        fresh.with_columns(pl.col("occurred_at").dt.date().alias("event_date"))
        .join(days, on="event_date", how="left")
        .filter(pl.col("served_until").is_null() | (pl.col("event_hour") >= pl.col("served_until")))
        .drop("served_until", "covered_end")
    )
    return aggregate.first_seen(in_realtime_hours, metrics)


def any_late_firsts(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute("select exists (select 1 from late_firsts)").fetchall()[0][0]


def before_firsts_change(
    con: duckdb.DuckDBPyConnection,
    firsts: pl.DataFrame,
    days: pl.DataFrame,
    stored: Callable[[pl.DataFrame], pl.DataFrame],
) -> None:
    """Record what the first events of the micro-batch in batch-served hours change, before the
    stored first events take them. Looks up (``stored``) only those user-days: late or lagging data, rare."""
    in_batch_hours = firsts.join(days, on="event_date", how="left").filter(
        pl.col("event_hour") < pl.col("served_until")
    )
    if in_batch_hours.is_empty():
        return
    con.register("candidates", in_batch_hours)
    con.register("first_seen", stored(in_batch_hours))
    try:
        # Per candidate c and kept first event f: the user-day's first event after this batch, and
        # whether the batch read any of its events that this partition has seen.
        con.execute(f"""
            create or replace temp table decided as
            with compared as (
                select
                    c.event_date, c.user_id, c.kind,
                    f.user_id is null
                        or c.occurred_at < f.occurred_at
                        or (c.occurred_at = f.occurred_at and c.kafka_offset < f.kafka_offset) as c_first,
                    {_IS_READ.format(hour="c.event_hour", offset="c.kafka_offset")} as c_read,
                    f.user_id is not null and not {_IS_BATCH_HOUR.format(hour="f.event_hour")} as f_realtime,
                    f.user_id is not null and {_IS_READ.format(hour="f.event_hour", offset="f.kafka_offset")} as f_read,
                    c.kafka_offset, c.event_hour,
                    f.occurred_at as f_occurred_at, f.kafka_offset as f_offset,
                    f.event_hour as f_hour, f.country as f_country
                from candidates as c
                join batch_days as d using (event_date)
                left join first_seen as f using (event_date, user_id, kind)
            )
            select
                compared.*,
                coalesce(l.read, false) or c_read or f_read as any_read,
                case when c_first then c_read else f_read end as first_read
            from compared
            left join late_firsts as l using (event_date, user_id, kind)
        """)
        # A user-day whose first event is now read is the batch's: nothing more to keep.
        con.execute("""
            delete from late_firsts as l using decided as x
            where x.first_read and l.event_date = x.event_date and l.user_id = x.user_id and l.kind = x.kind
        """)
        # A first event that is late: keep whether any event was read, and the first realtime one
        # (the replaced first event, when it was realtime; it was the user-day's first of all).
        con.execute("""
            insert into late_firsts by name (
                select
                    event_date, user_id, kind,
                    case when c_first then kafka_offset else f_offset end as first_offset,
                    case when c_first then event_hour else f_hour end as first_hour,
                    any_read as read,
                    case when c_first and f_realtime and not any_read then f_occurred_at end as realtime_occurred_at,
                    case when c_first and f_realtime and not any_read then f_offset end as realtime_offset,
                    case when c_first and f_realtime and not any_read then f_hour end as realtime_hour,
                    case when c_first and f_realtime and not any_read then f_country end as realtime_country
                from decided
                where not first_read
            )
            on conflict (event_date, user_id, kind) do update set
                first_offset = excluded.first_offset,
                first_hour = excluded.first_hour,
                read = excluded.read,
                realtime_occurred_at = case when excluded.read then null
                    else coalesce(excluded.realtime_occurred_at, late_firsts.realtime_occurred_at) end,
                realtime_offset = case when excluded.read then null
                    else coalesce(excluded.realtime_offset, late_firsts.realtime_offset) end,
                realtime_hour = case when excluded.read then null
                    else coalesce(excluded.realtime_hour, late_firsts.realtime_hour) end,
                realtime_country = case when excluded.read then null
                    else coalesce(excluded.realtime_country, late_firsts.realtime_country) end
        """)
        con.execute("drop table decided")
    finally:
        con.unregister("candidates")
        con.unregister("first_seen")


def after_realtime_events(con: duckdb.DuckDBPyConnection, realtime_firsts: pl.DataFrame) -> None:
    """A user-day whose first event is late and none read is counted at its first realtime event."""
    if realtime_firsts.is_empty():
        return
    con.register("realtime_candidates", realtime_firsts)
    try:
        con.execute("""
            update late_firsts as l set
                realtime_occurred_at = c.occurred_at, realtime_offset = c.kafka_offset,
                realtime_hour = c.event_hour, realtime_country = c.country
            from realtime_candidates as c
            where l.event_date = c.event_date and l.user_id = c.user_id and l.kind = c.kind
              and not l.read
              and (l.realtime_occurred_at is null
                   or c.occurred_at < l.realtime_occurred_at
                   or (c.occurred_at = l.realtime_occurred_at and c.kafka_offset < l.realtime_offset))
        """)
    finally:
        con.unregister("realtime_candidates")


def follow(con: duckdb.DuckDBPyConnection) -> int:
    """Apply a build that read more, or a boundary that moved (``batch_days``): a user-day whose first
    or realtime event the batch now reads is the batch's; a realtime event now in a batch-served hour
    no longer counts for the speed layer. Returns how many user-days changed."""
    first_read = _IS_READ.format(hour="l.first_hour", offset="l.first_offset")
    realtime_read = _IS_READ.format(hour="l.realtime_hour", offset="l.realtime_offset")
    realtime_in_batch = _IS_BATCH_HOUR.format(hour="l.realtime_hour")
    no_realtime = "realtime_occurred_at = null, realtime_offset = null, realtime_hour = null, realtime_country = null"
    changed = con.execute(f"""
        delete from late_firsts as l using batch_days as d
        where l.event_date = d.event_date and {first_read}
    """).fetchall()[0][0]
    changed += con.execute(f"""
        update late_firsts as l set read = true, {no_realtime}
        from batch_days as d
        where l.event_date = d.event_date and l.realtime_hour is not null and {realtime_read}
    """).fetchall()[0][0]
    changed += con.execute(f"""
        update late_firsts as l set {no_realtime}
        from batch_days as d
        where l.event_date = d.event_date and l.realtime_hour is not null and {realtime_in_batch}
    """).fetchall()[0][0]
    return changed
