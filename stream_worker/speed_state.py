"""One Kafka partition's speed-layer state, in a DuckDB file of its own.

The file holds the hourly aggregates, the dedupe keys (per hour: copies of an
event share occurred_at), each user-day's first event and first signup, and
the partition's consumed offset. A micro-batch changes all of them in one
transaction, which first checks that the stored offset is where the batch
starts: a batch is counted once or not at all, whoever crashes when.

Only the worker that owns the partition opens the file. Readers use the
snapshot it publishes after each commit.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from stream_worker import aggregate
from stream_worker.boundary import BatchHours
from stream_worker import metrics as metric_definitions
from stream_worker.errors import LambdaflowError, first_line
from stream_worker.metrics import Metric
from stream_worker.files import fsync_file, temp_path_for

log = logging.getLogger(__name__)

_SCHEMA = """
create table if not exists consumed (
    kafka_partition integer primary key,
    next_offset bigint not null,
    epoch integer not null,
    last_record varchar,
    committed_at timestamptz not null
);
create table if not exists seen_events (
    event_hour timestamp not null,
    event_id varchar not null
);
create table if not exists first_seen (
    event_date date not null,
    user_id varchar not null,
    kind varchar not null,
    occurred_at timestamptz not null,
    kafka_offset bigint not null,
    event_hour timestamp not null,
    country varchar not null,
    primary key (event_date, user_id, kind)
);
create table if not exists held (
    event_date date not null,
    user_id varchar not null,
    kind varchar not null,
    occurred_at timestamptz not null,
    kafka_offset bigint not null,
    event_hour timestamp not null,
    country varchar not null,
    primary key (event_date, user_id, kind)
);
drop table if exists late_attributions;
"""



def _hourly_table(metrics: tuple[Metric, ...]) -> str:
    columns = "".join(f"    {m.name} bigint not null,\n" for m in aggregate.counted(metrics))
    return f"""
create table if not exists hourly (
    event_hour timestamp not null,
    country varchar not null,
{columns}    primary key (event_hour, country)
);
"""


def snapshot_schema(metrics: tuple[Metric, ...]) -> pl.Schema:
    return pl.Schema({
        "event_date": pl.Date, "hour": pl.Int32, "country": pl.String,
        **{m.name: pl.Int64 for m in metrics},
        "kafka_partition": pl.Int32, "next_offset": pl.Int64, "epoch": pl.Int32,
    })


def _snapshot_sql(metrics: tuple[Metric, ...]) -> str:
    """Hourly rows of the partition: counted metrics beside the users metrics' attributions."""
    users = [m.name for m in metrics if m.counts_users]
    user_counts = "".join(f",\n        count(*) filter (where kind = '{name}') as {name}" for name in users)
    merged = ",\n".join(
        f"        coalesce({'u' if m.counts_users else 'h'}.{m.name}, 0) as {m.name}" for m in metrics
    )
    return f"""
with users as (
    select event_hour, country{user_counts}
    from first_seen
    group by all
),

merged as (
    select
        coalesce(h.event_hour, u.event_hour) as event_hour,
        coalesce(h.country, u.country) as country,
{merged}
    from hourly as h
    full outer join users as u
        on h.event_hour = u.event_hour and h.country = u.country
)

select
    cast(event_hour as date) as event_date,
    hour(event_hour) as hour,
    country,
    {", ".join(m.name for m in metrics)},
    c.kafka_partition,
    c.next_offset,
    c.epoch
from merged
cross join consumed as c
order by event_date, hour, country
"""


class StaleBatch(Exception):
    """The stored offset is not where the batch starts: another owner moved it."""


class StateFileBusy(Exception):
    """Another process still holds the partition's state file."""


class StateUnreadable(LambdaflowError):
    """The state file is damaged: the log can rebuild it."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(f"the speed state {path} cannot be read ({first_line(error)}): "
                         "rebuild it from the log with `lambdaflow stream --replay`")


class StateMetricsDiffer(LambdaflowError):
    """The state file counts other metrics than the definition names."""


@dataclass(frozen=True)
class Consumed:
    next_offset: int
    epoch: int
    last_record: dict | None


class PartitionState:
    def __init__(self, path: Path, partition: int, metrics: tuple[Metric, ...] | None = None) -> None:
        self.path = path
        self.partition = partition
        self.metrics = metrics or metric_definitions.defined()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(path), config={"threads": 1})
        except duckdb.IOException as error:
            if "lock" in str(error).lower():
                raise StateFileBusy(str(error)) from None
            raise StateUnreadable(path, error) from None
        except duckdb.Error as error:
            raise StateUnreadable(path, error) from None
        self._run("set TimeZone = 'UTC'")
        self._run(_SCHEMA + _hourly_table(self.metrics))
        self._check_metrics()

    def _check_metrics(self) -> None:
        """Refuse a state built for other metrics: its history would be wrong, not just short."""
        stored = [name for (name,) in self._run(
            "select column_name from information_schema.columns where table_name = 'hourly' order by ordinal_position"
        )][2:]
        expected = [m.name for m in aggregate.counted(self.metrics)]
        kinds = {kind for (kind,) in self._run("select distinct kind from first_seen")}
        unknown_kinds = kinds - {m.name for m in self.metrics if m.counts_users}
        if stored != expected or unknown_kinds:
            self._con.close()
            raise StateMetricsDiffer(
                f"the speed state {self.path} counts {stored + sorted(kinds)}, the definition "
                f"{[m.name for m in self.metrics]}: rebuild it from the log with `lambdaflow stream --replay`"
            )

    def _run(self, sql: str, parameters=None) -> list:
        """Execute a statement and drain its result (DuckDB 2 keeps a connection busy until then)."""
        return self._con.execute(sql, parameters).fetchall()

    def consumed(self) -> Consumed:
        rows = self._run(
            "select next_offset, epoch, last_record from consumed where kafka_partition = ?", [self.partition]
        )
        if not rows:
            return Consumed(0, 0, None)
        next_offset, epoch, last_record = rows[0]
        return Consumed(next_offset, epoch, json.loads(last_record) if last_record else None)

    def apply(self, events: pl.DataFrame, start: int, end: int, last_record: dict,
              batch: BatchHours | None = None) -> int:
        """Count a micro-batch of valid events covering offsets start..end-1, exactly once.

        ``batch``: the hours the batch layer serves, and what its builds read, as the batch manifest
        said when the micro-batch was read (None: nothing built). Returns how many events were new.
        Raises StaleBatch, changing nothing, when the stored offset is not ``start``.
        """
        con = self._con
        con.begin()
        try:
            consumed = self.consumed()
            if consumed.next_offset != start:
                raise StaleBatch(f"state resumes at {consumed.next_offset}, batch starts at {start}")
            fresh = self._fresh(aggregate.with_event_hour(aggregate.first_copies(events)))
            candidates = aggregate.first_seen(fresh, self.metrics)
            self._register_batch_days(candidates, batch or BatchHours.of(None), consumed.epoch)
            self._promote_held()
            if fresh.height:
                con.register("batch_hourly", aggregate.hourly_counts(fresh, self.metrics))
                updates = ", ".join(f"{m.name} = {m.name} + excluded.{m.name}" for m in aggregate.counted(self.metrics))
                self._run(f"""
                    insert into hourly by name (select * from batch_hourly)
                    on conflict (event_hour, country) do {f"update set {updates}" if updates else "nothing"}
                """)
                self._attribute(candidates)
            self._run("""
                insert or replace into consumed values (?, ?, ?, ?, now())
            """, [self.partition, end, consumed.epoch, json.dumps(last_record)])
            con.commit()
        except BaseException:
            con.rollback()
            raise
        finally:
            for view in ("batch_events", "batch_hourly", "batch_first_seen", "batch_days"):
                con.unregister(view)
        return fresh.height

    def follow(self, batch: BatchHours) -> bool:
        """Hand to the batch the held user-days that ``batch``'s builds have since read. True if any moved."""
        con = self._con
        con.begin()
        try:
            self._register_batch_days(aggregate.FIRST_SEEN_SCHEMA.to_frame(), batch, self.consumed().epoch)
            moved = self._promote_held()
            con.commit()
        except BaseException:
            con.rollback()
            raise
        finally:
            con.unregister("batch_days")
        return moved > 0

    def _fresh(self, events: pl.DataFrame) -> pl.DataFrame:
        """The events of the batch not counted before, their keys recorded as seen."""
        con = self._con
        con.register("batch_events", events)
        fresh = con.sql("""
            select b.*
            from batch_events as b
            anti join seen_events as s
                on s.event_hour = b.event_hour and s.event_id = b.event_id
        """).pl()
        con.register("batch_events", fresh)
        self._run("insert into seen_events select event_hour, event_id from batch_events")
        return fresh

    # Attribution (invariant 10). The batch counts a user-day when its build read one of the user's
    # events in an hour the batch serves; the speed layer counts every other user-day at its first
    # event in an hour the speed layer serves. Each event of a user-day is ranked by what the batch
    # made of it:
    #   0  in a batch-served hour, read by the day's build: the batch counts the user-day;
    #   1  in an hour the speed layer serves;
    #   2  in a batch-served hour, not read by the build (late): nobody counts it until a rebuild does.
    # A user-day keeps its best event by (rank, occurred_at, offset), so it is served in a realtime
    # hour exactly when the batch did not count it. A rank-2 event passed over for a rank-1 one is
    # held: when a rebuild reads it (it turns rank 0), the user-day moves to the batch.

    _RANK = """case
        when {x}.event_hour >= coalesce(d.served_until, cast({x}.event_date as timestamp)) then 1
        when {x}.kafka_offset < coalesce(d.covered_end, 0) then 0
        else 2
    end"""

    def _register_batch_days(self, candidates: pl.DataFrame, batch: BatchHours, epoch: int) -> None:
        """``batch_days``: per day of the candidates or the held events, the end of its batch-served
        hours and the offset below which the day's build read this partition."""
        held_days = {day for (day,) in self._run("select distinct event_date from held")}
        days = sorted(set(candidates["event_date"].unique().to_list()) | held_days)
        self._con.register("batch_days", pl.DataFrame({
            "event_date": days,
            "served_until": [batch.until(day) for day in days],
            "covered_end": [batch.covered_end(day, self.partition, epoch) for day in days],
        }, schema={"event_date": pl.Date, "served_until": pl.Datetime("us"), "covered_end": pl.Int64}))

    def _promote_held(self) -> int:
        """Held events a rebuild has since read: their user-days are now the batch's. Returns how many."""
        rank = self._RANK.format(x="h")
        moved = self._run(f"""
            insert or replace into first_seen by name (
                select h.* from held as h join batch_days as d using (event_date) where {rank} = 0
            )
        """)
        self._run(f"""
            delete from held as h using batch_days as d
            where h.event_date = d.event_date and {rank} = 0
        """)[0][0]
        return moved

    def _attribute(self, candidates: pl.DataFrame) -> None:
        """Each candidate (a user-day's first event in the micro-batch) against the user-day's kept event."""
        self._con.register("batch_first_seen", candidates)
        columns = ", ".join(aggregate.FIRST_SEEN_SCHEMA.names())
        c_rank, f_rank = self._RANK.format(x="c"), self._RANK.format(x="f")
        self._run(f"""
            create or replace temp table decided as
            with ranked as (
                select
                    c.*,
                    {c_rank} as c_rank,
                    f.user_id is not null as kept,
                    {f_rank} as f_rank,
                    f.occurred_at as f_occurred_at, f.kafka_offset as f_kafka_offset,
                    f.event_hour as f_event_hour, f.country as f_country
                from batch_first_seen as c
                left join first_seen as f using (event_date, user_id, kind)
                left join batch_days as d using (event_date)
            )
            select
                *,
                not kept
                    or c_rank < f_rank
                    or (c_rank = f_rank and (occurred_at < f_occurred_at
                                             or (occurred_at = f_occurred_at and kafka_offset < f_kafka_offset)))
                    as wins
            from ranked
        """)
        held_rows = f"""
            select event_date, user_id, kind, occurred_at, kafka_offset, event_hour, country
            from decided where not wins and c_rank = 2 and f_rank = 1
            union all
            select event_date, user_id, kind, f_occurred_at, f_kafka_offset, f_event_hour, f_country
            from decided where wins and kept and c_rank = 1 and f_rank = 2
        """
        self._run(f"""
            insert into held by position ({held_rows})
            on conflict (event_date, user_id, kind) do update set
                occurred_at = excluded.occurred_at, kafka_offset = excluded.kafka_offset,
                event_hour = excluded.event_hour, country = excluded.country
            where excluded.occurred_at < held.occurred_at
               or (excluded.occurred_at = held.occurred_at and excluded.kafka_offset < held.kafka_offset)
        """)
        self._run("""
            delete from held as h using decided as x
            where x.wins and x.c_rank = 0
              and h.event_date = x.event_date and h.user_id = x.user_id and h.kind = x.kind
        """)
        self._run(f"""
            insert or replace into first_seen by name (select {columns} from decided where wins)
        """)
        self._run("drop table decided")

    def restart_log(self, epoch: int) -> None:
        """The partition's log restarted: consume the new log from its beginning."""
        self._run("insert or replace into consumed values (?, 0, ?, null, now())", [self.partition, epoch])

    def snapshot(self) -> pl.DataFrame:
        return self._con.sql(_snapshot_sql(self.metrics)).pl().cast(snapshot_schema(self.metrics))

    def publish_snapshot(self, final: Path, temp_dir: Path) -> None:
        """Replace the partition's snapshot file atomically."""
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path_for(final, temp_dir)
        self.snapshot().write_parquet(temp, compression="zstd")
        fsync_file(temp)
        os.replace(temp, final)

    def first_day(self) -> date | None:
        """The earliest day the state holds counts for (None when it holds none)."""
        earliest = self._run("select min(event_hour) from hourly")[0][0]
        return earliest.date() if earliest is not None else None

    def drop_days_before(self, first_kept: date) -> None:
        con = self._con
        con.begin()
        self._run("delete from seen_events where event_hour < ?", [first_kept])
        self._run("delete from hourly where event_hour < ?", [first_kept])
        self._run("delete from first_seen where event_date < ?", [first_kept])
        self._run("delete from held where event_date < ?", [first_kept])
        con.commit()

    def close(self) -> None:
        self._con.close()
