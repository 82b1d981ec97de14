"""A partition's speed-layer state file: one transaction per micro-batch."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import duckdb
import polars as pl
import pytest
from test_aggregate import events

from lambdaflow.core import metrics
from lambdaflow.core.boundary import BatchHours, log_id
from lambdaflow.core.metrics import Metric
from stream_worker.dedupe import HashChanged
from stream_worker.state import PartitionState, StaleBatch, StateFileBusy, StateMetricsDiffer, StateUnreadable

LAST = {"offset": 0, "timestamp": 0, "crc32": 0}


@pytest.fixture
def state(tmp_path):
    state = PartitionState(tmp_path / "partition-0.duckdb", 0)
    yield state
    state.close()


def totals(state: PartitionState) -> dict:
    snapshot = state.snapshot()
    return {c: snapshot[c].sum() for c in ("events", "new_users", "active_users", "orders", "revenue_cents")}


def test_a_batch_that_does_not_start_at_the_stored_offset_changes_nothing(state) -> None:
    batch = events(("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 0))
    assert state.apply(batch, start=0, end=1, last_record=LAST) == 1
    before = state.snapshot()
    with pytest.raises(StaleBatch):
        state.apply(batch, start=0, end=1, last_record=LAST)
    assert state.snapshot().equals(before)
    assert state.consumed().next_offset == 1


def test_a_duplicate_in_a_later_batch_counts_once(state) -> None:
    state.apply(events(("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 0)), 0, 1, LAST)
    new = state.apply(events(("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 1)), 1, 2, LAST)
    assert new == 0
    assert totals(state) == {"events": 1, "new_users": 0, "active_users": 1, "orders": 1, "revenue_cents": 500}


def test_an_earlier_event_arriving_later_moves_the_attribution(state) -> None:
    state.apply(events(("e2", "signup", "u1", "2026-11-26T12:00:00Z", "US", None, 0)), 0, 1, LAST)
    state.apply(events(("e1", "login", "u1", "2026-11-26T09:00:00Z", "DE", None, 1)), 1, 2, LAST)
    rows = state.snapshot().filter(pl.col("active_users") > 0).select("hour", "country").rows()
    assert rows == [(9, "DE")]
    assert totals(state)["active_users"] == 1


def built(until_hour: int, read_below: int, epoch: int = 0) -> BatchHours:
    """2026-11-26 built until ``until_hour`` (the boundary; 24 is the whole day), its build having read
    partition 0 below ``read_below``."""
    until = (datetime(2026, 11, 26, tzinfo=UTC) + timedelta(hours=until_hour)).isoformat()
    return BatchHours.of(
        {
            "boundary": until,
            "days": {
                "2026-11-26": {
                    "file": "batch/published/x.parquet",
                    "built_until": until,
                    "covered": {"0": {"epoch": epoch, "offset": read_below}},
                }
            },
        }
    )


def served_users(state: PartitionState, batch: BatchHours) -> list[tuple[int, str, int]]:
    """(hour, country, active_users) of the rows the speed layer serves: the hours the batch does not."""
    snapshot = state.snapshot().filter(pl.col("active_users") > 0)
    return [
        (hour, country, users)
        for day, hour, country, users in snapshot.select("event_date", "hour", "country", "active_users").rows()
        if not batch.serves(datetime(day.year, day.month, day.day, hour))
    ]


def test_a_late_event_the_batch_did_not_read_leaves_the_user_in_the_speed_layers_hour(state) -> None:
    state.apply(events(("e2", "login", "u1", "2026-11-26T12:00:00Z", "US", None, 0)), 0, 1, LAST)
    batch = built(until_hour=11, read_below=1)  # the batch has built every hour before 11:00
    state.apply(events(("e1", "login", "u1", "2026-11-26T09:00:00Z", "DE", None, 1)), 1, 2, LAST, batch)
    assert served_users(state, batch) == [(12, "US", 1)]  # the batch never read e1: the speed layer counts u1
    # A rebuild reads e1 (offset 1): the batch now counts u1 at 09:00, so the speed layer lets go of it.
    rebuilt = built(until_hour=11, read_below=2)
    state.apply(events(), 2, 2, LAST, rebuilt)
    assert served_users(state, rebuilt) == []
    assert state.snapshot().filter(pl.col("active_users") > 0).select("hour", "country").rows() == [(9, "DE")]


def test_a_user_the_batch_counted_leaves_the_realtime_hour_once_the_lagging_speed_layer_reads_it(state) -> None:
    """The speed layer lags: it has counted u1's 14:00 event, not yet the 09:10 one that arrived later.
    `batch --today` reads both and counts u1 at 09:00; when the speed layer reads e1, u1 leaves 14:00."""
    state.apply(events(("e2", "login", "u1", "2026-11-26T14:00:00Z", "US", None, 0)), 0, 1, LAST)
    batch = built(until_hour=13, read_below=2)
    assert served_users(state, batch) == [(14, "US", 1)]
    state.apply(events(("e1", "login", "u1", "2026-11-26T09:10:00Z", "DE", None, 1)), 1, 2, LAST, batch)
    assert served_users(state, batch) == []
    assert totals(state)["active_users"] == 1


def test_a_user_day_first_seen_late_is_counted_at_its_first_event_the_speed_layer_serves(state) -> None:
    batch = built(until_hour=11, read_below=0)
    state.apply(events(("e1", "login", "u1", "2026-11-26T09:00:00Z", "DE", None, 0)), 0, 1, LAST, batch)
    assert served_users(state, batch) == []  # late for the batch: nobody counts it until a rebuild
    state.apply(events(("e2", "login", "u1", "2026-11-26T12:00:00Z", "US", None, 1)), 1, 2, LAST, batch)
    assert served_users(state, batch) == [(12, "US", 1)]
    # The build read another log epoch than the one counted: its offsets say nothing of this log.
    other_epoch = built(until_hour=11, read_below=5, epoch=1)
    state.apply(events(), 2, 2, LAST, other_epoch)
    assert served_users(state, other_epoch) == [(12, "US", 1)]


def test_the_state_survives_a_reopen(tmp_path) -> None:
    path = tmp_path / "partition-0.duckdb"
    state = PartitionState(path, 0)
    state.apply(events(("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 41)), 0, 42, LAST)
    state.close()
    again = PartitionState(path, 0)
    assert again.consumed().next_offset == 42
    assert totals(again)["revenue_cents"] == 500
    again.close()


def test_a_file_held_by_another_process_is_reported_busy(tmp_path) -> None:
    import subprocess
    import sys

    path = tmp_path / "partition-0.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StateFileBusy):
            PartitionState(path, 0)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    PartitionState(path, 0).close()  # free again once the holder is gone


def test_a_state_built_for_other_metrics_is_refused_with_the_way_out(tmp_path) -> None:
    path = tmp_path / "partition-0.duckdb"
    state = PartitionState(path, 0)
    state.apply(events(("e1", "signup", "u1", "2026-11-26T10:00:00Z", "DE", None, 0)), 0, 1, LAST)
    state.close()
    more = (*metrics.defined(), Metric("logins", "count", "Login events.", ("login",)))
    with pytest.raises(StateMetricsDiffer, match="lambdaflow stream --replay"):
        PartitionState(path, 0, more)
    fewer = tuple(m for m in metrics.defined() if m.name != "new_users")  # a users metric removed
    with pytest.raises(StateMetricsDiffer, match="new_users"):
        PartitionState(path, 0, fewer)
    reopened = PartitionState(path, 0)  # the definition it was built for still opens it
    assert totals(reopened)["events"] == 1
    reopened.close()


def test_a_damaged_state_file_is_refused_with_the_way_out(tmp_path) -> None:
    path = tmp_path / "partition-0.duckdb"
    path.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(StateUnreadable, match="cannot be read .*lambdaflow stream --replay"):
        PartitionState(path, 0)


@pytest.mark.parametrize("seed", [*range(4), *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(4, 8))])
def test_each_user_day_is_served_once_across_both_layers_whatever_the_order(tmp_path, seed) -> None:
    """One partition, a day of events arriving out of order, counted in random micro-batches while
    the batch builds ever more of the day (the boundary moving on, rebuilds reading late events).
    Each build reads what the speed layer has counted by then, as when it has caught up. After every
    step, the users the speed layer serves must be exactly those the batch did not count, each at
    its first counted event in a realtime hour."""
    rng = random.Random(seed)
    day = datetime(2026, 11, 26, tzinfo=UTC)
    rows = [
        (f"e{n}", "login", f"u{rng.randrange(12)}", day + timedelta(minutes=rng.randrange(24 * 60))) for n in range(150)
    ]
    rng.shuffle(rows)  # arrival order: offsets
    state = PartitionState(tmp_path / "p.duckdb", 0)
    consumed, boundary_hour, read_below = 0, 0, 0
    batch = None
    while consumed < len(rows):
        step = rng.randrange(1, 25)
        chunk = rows[consumed : consumed + step]
        frame = events(
            *(
                (eid, kind, user, at.isoformat(), "DE", None, consumed + i)
                for i, (eid, kind, user, at) in enumerate(chunk)
            )
        )
        state.apply(frame, consumed, consumed + len(chunk), LAST, batch)
        consumed += len(chunk)
        if rng.random() < 0.3:  # a build: the boundary moves on (or stays), reading what has arrived
            boundary_hour = min(24, boundary_hour + rng.randrange(0, 6))
            read_below = consumed
            batch = built(until_hour=boundary_hour, read_below=read_below)
            state.follow(batch)
        expected = _served_once(rows[:consumed], boundary_hour, read_below)
        assert served_users(state, batch or BatchHours.of(None)) == expected, (seed, consumed)
    state.close()


def _served_once(arrived: list[tuple], boundary_hour: int, read_below: int) -> list[tuple[int, str, int]]:
    """The truth: a user the batch read in a batch-served hour is the batch's; any other user is
    served at its first event (by time, then offset) in an hour from the boundary on."""
    per_user: dict[str, list[tuple]] = {}
    for offset, (_, _, user, at) in enumerate(arrived):
        per_user.setdefault(user, []).append((at, offset))
    hours: dict[int, int] = {}
    for found in per_user.values():
        if any(at.hour < boundary_hour and offset < read_below for at, offset in found):
            continue
        later = sorted(item for item in found if item[0].hour >= boundary_hour)
        if later:
            hours[later[0][0].hour] = hours.get(later[0][0].hour, 0) + 1
    return [(hour, "DE", users) for hour, users in sorted(hours.items())]


def test_a_build_of_the_same_log_counts_though_the_workers_number_its_epochs_apart(state) -> None:
    """After a broker restart the archiver reads the new log as its epoch 1; a speed layer replayed
    from it counts the same log as its epoch 0. The build's offsets apply to the log both read, told
    by its identity (its first record), not by the epoch numbers."""
    first = {"offset": 0, "timestamp": 1796000000000, "crc32": 77}
    state.apply(events(("e2", "login", "u1", "2026-11-26T14:00:00Z", "US", None, 0)), 0, 1, LAST, None, first)
    assert state.consumed().log_id == log_id(first) and state.consumed().epoch == 0
    same_log = BatchHours.of(
        {
            "boundary": "2026-11-26T13:00:00+00:00",
            "days": {
                "2026-11-26": {
                    "file": "f",
                    "built_until": "2026-11-26T13:00:00+00:00",
                    "covered": {"0": {"epoch": 1, "offset": 2, "log": log_id(first)}},
                }
            },
        }
    )
    other_log = BatchHours.of(
        {
            "boundary": "2026-11-26T13:00:00+00:00",
            "days": {
                "2026-11-26": {
                    "file": "f",
                    "built_until": "2026-11-26T13:00:00+00:00",
                    "covered": {"0": {"epoch": 0, "offset": 2, "log": "another-log"}},
                }
            },
        }
    )
    assert other_log.covered_end(date(2026, 11, 26), 0, 0, log_id(first)) == 0  # epoch 0, but another log
    state.apply(events(("e1", "login", "u1", "2026-11-26T09:10:00Z", "DE", None, 1)), 1, 2, LAST, same_log)
    assert served_users(state, same_log) == []  # the batch read e1 from this log: u1 is the batch's


def test_an_earlier_first_event_survives_a_reopen_and_keeps_the_log_short(tmp_path) -> None:
    path = tmp_path / "partition-0.duckdb"
    state = PartitionState(path, 0)
    state.apply(events(("e2", "login", "u1", "2026-11-26T11:00:00Z", "DE", None, 0)), 0, 1, LAST)
    state.apply(events(("e1", "login", "u1", "2026-11-26T10:00:00Z", "FR", None, 1)), 1, 2, LAST)
    before = state.snapshot()
    state.close()
    again = PartitionState(path, 0)
    assert again.snapshot().equals(before)
    hour_10 = before.filter(pl.col("hour") == 10)
    assert hour_10["active_users"].to_list() == [1] and hour_10["country"].to_list() == ["FR"]
    assert before.filter(pl.col("hour") == 11)["active_users"].to_list() == [0]
    # the earlier event now stands first: a copy of the later one changes nothing
    again.apply(events(("e3", "login", "u1", "2026-11-26T12:00:00Z", "DE", None, 2)), 2, 3, LAST)
    assert totals(again)["active_users"] == 1
    again.close()
    with duckdb.connect(str(path)) as con:  # the superseded first event was compacted away on reopen
        assert con.execute("select count(*) from first_events").fetchall() == [(1,)]


def test_a_state_written_with_text_keys_and_an_indexed_first_seen_moves_to_the_new_layout(tmp_path) -> None:
    """A state file of the earlier layout: every dedupe key as text in one table, first_seen on disk."""
    path = tmp_path / "partition-0.duckdb"
    state = PartitionState(path, 0)
    state.apply(events(("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 0)), 0, 1, LAST)
    state.close()
    with duckdb.connect(str(path)) as con:
        con.execute("set TimeZone = 'UTC'")
        con.execute("""
            create table seen_events as select timestamp '2026-11-26 10:00' as event_hour, 'e1' as event_id;
            drop table seen_2026112610;
            create table first_seen (
                event_date date, user_id varchar, kind varchar, occurred_at timestamptz, kafka_offset bigint,
                event_hour timestamp, country varchar, primary key (event_date, user_id, kind));
            insert into first_seen select * from first_events;
            drop table first_events;
        """)
    moved = PartitionState(path, 0)
    assert moved.apply(events(("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 1)), 1, 2, LAST) == 0
    assert moved.apply(events(("e2", "order", "u1", "2026-11-26T10:30:00Z", "DE", 700, 2)), 2, 3, LAST) == 1
    assert totals(moved) == {"events": 2, "new_users": 0, "active_users": 1, "orders": 2, "revenue_cents": 1200}
    moved.close()
    with duckdb.connect(str(path)) as con:
        tables = {name for (name,) in con.execute("select table_name from duckdb_tables()").fetchall()}
    assert {"seen_2026112610", "first_events"} <= tables and not {"seen_events", "first_seen"} & tables


def test_keys_hashed_by_another_duckdb_hash_are_refused_with_the_way_out(tmp_path) -> None:
    path = tmp_path / "partition-0.duckdb"
    PartitionState(path, 0).close()
    with duckdb.connect(str(path)) as con:
        con.execute("update state_format set value = '12345' where name = 'hash_probe'")
    with pytest.raises(HashChanged, match="lambdaflow stream --replay"):
        PartitionState(path, 0)
    with duckdb.connect(str(path)):  # refused without holding the file
        pass


def test_a_sealed_day_keeps_its_counts_and_leaves_later_events_to_the_batch(tmp_path) -> None:
    path = tmp_path / "partition-0.duckdb"
    state = PartitionState(path, 0)
    state.apply(events(("e1", "signup", "u1", "2026-11-20T10:00:00Z", "DE", None, 0)), 0, 1, LAST)
    state.apply(events(("e2", "order", "u2", "2026-11-27T10:00:00Z", "FR", 300, 1)), 1, 2, LAST)
    before = state.snapshot()
    state.seal_days_before(date(2026, 11, 21))
    state.seal_days_before(date(2026, 11, 19))  # the seal never moves back
    assert state.sealed_before() == date(2026, 11, 21)
    assert state.snapshot().equals(before)
    state.close()
    state = PartitionState(path, 0)
    assert state.snapshot().equals(before)  # the sealed day's users survive a reopen
    late = events(
        ("e1", "signup", "u1", "2026-11-20T10:00:00Z", "DE", None, 2),  # a copy: its key is gone
        ("e3", "signup", "u3", "2026-11-20T11:00:00Z", "DE", None, 3),
        ("e4", "login", "u2", "2026-11-27T09:00:00Z", "FR", None, 4),
    )
    assert state.apply(late, 2, 5, LAST) == 1
    assert totals(state) == {"events": 3, "new_users": 1, "active_users": 2, "orders": 1, "revenue_cents": 300}
    state.close()
    with duckdb.connect(str(path)) as con:
        tables = {name for (name,) in con.execute("select table_name from duckdb_tables()").fetchall()}
        assert "seen_2026112010" not in tables and "seen_2026112710" in tables
        assert con.execute("select min(event_date) from first_events").fetchall() == [(date(2026, 11, 27),)]


def test_a_micro_batch_that_fails_half_way_changes_nothing_and_the_next_one_counts(state) -> None:
    bad = events(("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 0)).with_columns(
        pl.lit(None, pl.String).alias("country")  # refused by the hourly table, after the keys were written
    )
    with pytest.raises(duckdb.ConstraintException):
        state.apply(bad, 0, 1, LAST)
    assert state.consumed().next_offset == 0
    assert state.apply(events(("e1", "order", "u1", "2026-11-26T10:00:00Z", "DE", 500, 0)), 0, 1, LAST) == 1
    assert totals(state) == {"events": 1, "new_users": 0, "active_users": 1, "orders": 1, "revenue_cents": 500}
