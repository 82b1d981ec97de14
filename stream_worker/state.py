"""One Kafka partition's speed-layer state, in a DuckDB file of its own.

The file holds the hourly aggregates, the dedupe keys (one table per hour, see
dedupe), each user-day's first event per users metric (a log, indexed in
memory, see firsts), and the partition's consumed offset. A micro-batch changes all of them in one
transaction, which first checks that the stored offset is where the batch
starts: a batch is counted once or not at all, whoever crashes when.

Only the worker that owns the partition opens the file. Readers use the
snapshot it publishes after each commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import duckdb
import polars as pl

from lambdaflow.core import aggregate
from lambdaflow.core import metrics as metric_definitions
from lambdaflow.core.boundary import BatchHours, log_id
from lambdaflow.core.errors import LambdaflowError, first_line
from lambdaflow.core.metrics import Metric
from stream_worker import attribution, dedupe, firsts

log = logging.getLogger(__name__)

_SCHEMA = (
    attribution.SCHEMA
    + """
create table if not exists consumed (
    kafka_partition integer primary key,
    next_offset bigint not null,
    epoch integer not null,
    last_record varchar,
    committed_at timestamptz not null
);
alter table consumed add column if not exists log_id varchar;
drop table if exists late_attributions;
create table if not exists sealed_counts (
    event_hour timestamp not null,
    country varchar not null,
    kind varchar not null,
    users bigint not null
);
"""
)


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
    return pl.Schema(
        {
            "event_date": pl.Date,
            "hour": pl.Int32,
            "country": pl.String,
            **{m.name: pl.Int64 for m in metrics},
            "kafka_partition": pl.Int32,
            "next_offset": pl.Int64,
            "epoch": pl.Int32,
            "log_id": pl.String,
        }
    )


def _snapshot_sql(metrics: tuple[Metric, ...]) -> str:
    """Hourly rows of the partition: counted metrics beside the users metrics' attributions."""
    users = [m.name for m in metrics if m.counts_users]
    user_counts = "".join(f",\n        sum(users) filter (where kind = '{name}') as {name}" for name in users)
    merged = ",\n".join(f"        coalesce({'u' if m.counts_users else 'h'}.{m.name}, 0) as {m.name}" for m in metrics)
    return f"""
with users as (
    select event_hour, country{user_counts}
    from ({firsts.USERS_SQL} union all select event_hour, country, kind, users from sealed_counts) as counted
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
    c.epoch,
    c.log_id
from merged
cross join consumed as c
order by event_date, hour, country
"""


_CONFIG: dict[str, str | bool | int | float | list[str]] = {"threads": 1, "default_block_size": "16384"}
"""One thread: a worker holds several partitions. Blocks of 16 KB instead of 256 KB for a new file:
each hour's dedupe keys are a table of their own, and a quiet hour would take a whole block (72 hours of
5,000 keys: 3.6 MB instead of 19 MB). A file keeps the block size it was created with."""


class StaleBatch(Exception):
    """The stored offset is not where the batch starts: another owner moved it."""


class StateFileBusy(Exception):
    """Another process still holds the partition's state file."""


class StateUnreadable(LambdaflowError):
    """The state file is damaged: the log can rebuild it."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(
            f"the speed state {path} cannot be read ({first_line(error)}): "
            "rebuild it from the log with `lambdaflow stream --replay`"
        )


class StateMetricsDiffer(LambdaflowError):
    """The state file counts other metrics than the definition names."""


@dataclass(frozen=True)
class Consumed:
    next_offset: int
    epoch: int
    last_record: dict | None
    log_id: str | None = None
    """The identity of the log counted in this epoch (boundary.log_id), once its offset 0 is counted."""


class PartitionState:
    def __init__(self, path: Path, partition: int, metrics: tuple[Metric, ...] | None = None) -> None:
        self.path = path
        self.partition = partition
        self.metrics = metrics or metric_definitions.defined()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(path), config=_CONFIG)
        except duckdb.IOException as error:
            if "lock" in str(error).lower():
                raise StateFileBusy(str(error)) from None
            raise StateUnreadable(path, error) from None
        except duckdb.Error as error:
            raise StateUnreadable(path, error) from None
        try:
            self._run("set TimeZone = 'UTC'")
            self._run(_SCHEMA + _hourly_table(self.metrics))
            dedupe.prepare(self._con, path)
            self._hours: set[datetime] = set()  # hours whose dedupe table exists
            self._firsts = firsts.FirstSeen(self._con)
            self._check_metrics()
            sealed = self._run("select value from state_format where name = 'sealed_before'")
            self._sealed: date | None = date.fromisoformat(sealed[0][0]) if sealed else None
        except BaseException:
            self._con.close()
            raise

    def _check_metrics(self) -> None:
        """Refuse a state built for other metrics: its history would be wrong, not just short."""
        stored = [
            name
            for (name,) in self._run(
                "select column_name from information_schema.columns "
                "where table_name = 'hourly' order by ordinal_position"
            )
        ][2:]
        expected = [m.name for m in aggregate.counted(self.metrics)]
        kinds = self._firsts.kinds()
        unknown_kinds = kinds - {m.name for m in self.metrics if m.counts_users}
        if stored != expected or unknown_kinds:
            raise StateMetricsDiffer(
                f"the speed state {self.path} counts {stored + sorted(kinds)}, the definition "
                f"{[m.name for m in self.metrics]}: rebuild it from the log with `lambdaflow stream --replay`"
            )

    def _run(self, sql: str, parameters=None) -> list:
        """Execute a statement and drain its result (DuckDB 2 keeps a connection busy until then)."""
        return self._con.execute(sql, parameters).fetchall()

    def consumed(self) -> Consumed:
        rows = self._run(
            "select next_offset, epoch, last_record, log_id from consumed where kafka_partition = ?", [self.partition]
        )
        if not rows:
            return Consumed(0, 0, None)
        next_offset, epoch, last_record, log = rows[0]
        return Consumed(next_offset, epoch, json.loads(last_record) if last_record else None, log)

    def apply(
        self,
        events: pl.DataFrame,
        start: int,
        end: int,
        last_record: dict,
        batch: BatchHours | None = None,
        first_record: dict | None = None,
    ) -> int:
        """Count a micro-batch of valid events covering offsets start..end-1, exactly once.

        ``batch``: the hours the batch layer serves, and what its builds read, as the batch manifest
        said when the micro-batch was read (None: nothing built). ``first_record``: the fingerprint of
        the record at ``start``; at offset 0 it names the log (boundary.log_id). Returns how many
        events were new.
        Raises StaleBatch, changing nothing, when the stored offset is not ``start``.
        """
        try:
            with self._transaction() as con:
                consumed = self.consumed()
                if consumed.next_offset != start:
                    raise StaleBatch(f"state resumes at {consumed.next_offset}, batch starts at {start}")
                events = self._without_sealed_days(events)
                fresh = dedupe.fresh(con, aggregate.first_copies(aggregate.with_event_hour(events)), self._hours)
                log = log_id(first_record) if start == 0 else consumed.log_id
                days = self._register_batch_days(batch, consumed, set(fresh["event_date"].unique().to_list()), log)
                if attribution.any_late_firsts(con):  # else there is nothing to hand to the batch
                    attribution.follow(con)
                if fresh.height:
                    self._add_hourly(fresh)
                    self._attribute(fresh, days)
                self._store_consumed(end, consumed.epoch, last_record, log)
        finally:
            for view in ("batch_hourly", "batch_days"):
                self._con.unregister(view)
        return fresh.height

    def _without_sealed_days(self, events: pl.DataFrame) -> pl.DataFrame:
        """Events of a sealed day are left to the batch layer: without its keys, a copy would count twice."""
        sealed = self.sealed_before()
        if sealed is None:
            return events
        too_old = pl.col("occurred_at").dt.date() < sealed
        dropped = events.filter(too_old).height
        if dropped:
            log.warning(
                "partition %d: %d event(s) before %s, a day past the speed layer's retention, left to the batch layer",
                self.partition,
                dropped,
                sealed,
            )
        return events.filter(~too_old)

    def sealed_before(self) -> date | None:
        """The days before this one are sealed: only their aggregates are kept (see seal_days_before).
        Read once at open, so that a micro-batch does not ask the file."""
        return self._sealed

    def seal_days_before(self, first_open: date) -> None:
        """Keep only the aggregates of the days before ``first_open``: their dedupe keys and user-days,
        the bulk of the state, are dropped. Their later events are left to the batch layer."""
        sealed = self.sealed_before()
        if sealed is not None and first_open <= sealed:
            return
        with self._transaction() as con:
            self._run("insert into sealed_counts select * from first_counts where event_hour < ?", [first_open])
            dedupe.drop_before(con, first_open, self._hours)
            self._firsts.drop_before(first_open)
            self._run("insert or replace into state_format values ('sealed_before', ?)", [first_open.isoformat()])
        self._sealed = first_open

    def follow(self, batch: BatchHours) -> bool:
        """Hand to the batch the user-days that ``batch``'s builds have since read (see attribution).
        True if any changed."""
        try:
            with self._transaction() as con:
                consumed = self.consumed()
                self._register_batch_days(batch, consumed, set(), consumed.log_id)
                changed = attribution.follow(con)
        finally:
            self._con.unregister("batch_days")
        return changed > 0

    def _register_batch_days(
        self, batch: BatchHours | None, consumed: Consumed, days: set, log: str | None
    ) -> pl.DataFrame:
        frame = attribution.batch_days(
            self._con, batch or BatchHours.of(None), self.partition, consumed.epoch, log, days
        )
        self._con.register("batch_days", frame)
        return frame

    def _attribute(self, fresh: pl.DataFrame, days: pl.DataFrame) -> None:
        """Keep each user-day's first event, and what the speed layer counts beside it (see attribution)."""
        batch_firsts = aggregate.first_seen(fresh, self.metrics)
        attribution.before_firsts_change(self._con, batch_firsts, days, self._firsts.stored)
        self._firsts.upsert(batch_firsts)
        if attribution.any_late_firsts(self._con):  # rare: late data; else no user-day needs it
            attribution.after_realtime_events(self._con, attribution.realtime_firsts(fresh, days, self.metrics))

    def restart_log(self, epoch: int) -> None:
        """The partition's log restarted: consume the new log from its beginning."""
        self._store_consumed(0, epoch, None, None)

    def _store_consumed(self, next_offset: int, epoch: int, last_record: dict | None, log: str | None) -> None:
        self._run(
            """
            insert or replace into consumed (kafka_partition, next_offset, epoch, last_record, committed_at, log_id)
            values (?, ?, ?, ?, now(), ?)
        """,
            [self.partition, next_offset, epoch, json.dumps(last_record) if last_record else None, log],
        )

    def _add_hourly(self, fresh: pl.DataFrame) -> None:
        """Add the new events' count and sum metrics to their hours."""
        self._con.register("batch_hourly", aggregate.hourly_counts(fresh, self.metrics))
        updates = ", ".join(f"{m.name} = {m.name} + excluded.{m.name}" for m in aggregate.counted(self.metrics))
        self._run(f"""
            insert into hourly by name (select * from batch_hourly)
            on conflict (event_hour, country) do {f"update set {updates}" if updates else "nothing"}
        """)

    def snapshot(self) -> pl.DataFrame:
        return self._con.sql(_snapshot_sql(self.metrics)).pl().cast(snapshot_schema(self.metrics))

    def first_day(self) -> date | None:
        """The earliest day the state holds counts for (None when it holds none)."""
        earliest = self._run("select min(event_hour) from hourly")[0][0]
        return earliest.date() if earliest is not None else None

    def last_day(self) -> date | None:
        """The latest day the state holds counts for (None when it holds none)."""
        latest = self._run("select max(event_hour) from hourly")[0][0]
        return latest.date() if latest is not None else None

    def drop_days_before(self, first_kept: date) -> None:
        with self._transaction() as con:
            dedupe.drop_before(con, first_kept, self._hours)
            self._firsts.drop_before(first_kept)
            self._run("delete from hourly where event_hour < ?", [first_kept])
            self._run("delete from late_firsts where event_date < ?", [first_kept])
            self._run("delete from sealed_counts where event_hour < ?", [first_kept])

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction. What it changes outside the database (the first events' index, the hours
        whose dedupe table exists) follows its outcome."""
        con = self._con
        con.begin()
        try:
            yield con
            con.commit()
        except BaseException:
            con.rollback()
            self._firsts.rolled_back()
            self._hours.clear()
            raise
        self._firsts.committed()

    def close(self) -> None:
        self._con.close()
