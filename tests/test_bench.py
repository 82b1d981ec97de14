"""`make bench QUICK=1`: the benchmark runs end to end at small sizes, so its code cannot rot.

The figures of a quick run judge nothing (the sizes are tiny and the test
suite shares the machine); the test checks that every row of the summary is
there with its figure, ratio and target, that the report and its plots exist,
and that the run left no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambdaflow.ops.procfs import proc_cmdline, proc_environ, running_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benchmark reads /proc")

ROWS = {
    "ingest.archiver",
    "ingest.archiver_s3",
    "ingest.stream",
    "freshness.p99",
    "batch.dbt_models",
    "batch.whole_process",
    "batch.scaling",
    "queries.idle",
    "queries.busy",
    "queries.cli",
    "queries.s3",
    "backfill.overhead",
    "state.speed_state_per_million",
    "files.raw_per_partition_per_day",
    "files.compaction",
    "growth.ratio",
    "peer.quixstreams",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _processes_mentioning(text: str) -> list[int]:
    """Running processes whose environment or command line names ``text``."""
    return [
        process.pid
        for process in running_processes()
        if process.pid != os.getpid()
        and any(text in part for part in (proc_environ(process.pid) or []) + (proc_cmdline(process.pid) or []))
    ]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    out, scratch = root / "results", root / "scratch"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_", "AIRFLOW", "DBT_"))}
    env["TMPDIR"] = str(scratch)  # the benchmark's scratch folder, and so every child's environment, names it
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return done, out, scratch


@pytest.mark.slow
def test_quick_bench_writes_every_row_with_figure_ratio_and_target(quick_run) -> None:
    done, out, _ = quick_run
    assert done.returncode == 0, done.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["id"]: row for row in summary["rows"]}
    assert set(rows) == ROWS
    for row in rows.values():
        assert {"what", "figure", "unit", "peer", "peer_figure", "ratio", "target", "met"} <= set(row)
        assert row["figure"] is not None, row
        assert row["target"] is not None, row  # every row can fail
        assert row["ratio"] is not None and isinstance(row["met"], bool), row
        assert row["met"] or row["why"], row  # a missed target says why
    assert rows["peer.quixstreams"]["detail"]["same_table"], rows["peer.quixstreams"]  # a peer that counts alike
    assert rows["queries.idle"]["detail"]["same_answer"], rows["queries.idle"]
    assert rows["ingest.stream"]["detail"]["crc32c_ceiling"] == "C", rows["ingest.stream"]
    assert rows["ingest.stream"]["detail"]["crc32c_workers"] == "C", rows["ingest.stream"]
    assert summary["quick"] is True
    assert summary["machine"]["cores"] and summary["versions"]["duckdb"] and summary["date"]


@pytest.mark.slow
def test_quick_bench_writes_the_report_with_its_plots(quick_run) -> None:
    done, out, _ = quick_run
    assert done.returncode == 0, done.stderr[-5000:]
    report = (out / "report.md").read_text()
    plots = sorted(out.glob("*.png"))
    assert len(plots) >= 6
    for plot in plots:
        assert plot.read_bytes()[:8] == PNG_MAGIC
        assert f"]({plot.name})" in report
    for heading in (
        "## Summary",
        "## 1. Ingest",
        "## 2. Freshness",
        "## 3. Batch",
        "## 4. Queries",
        "## 5. Backfill",
        "## 6. State",
        "## 7. State growth",
        "## 8. Peer",
        "## Closing note",
    ):
        assert heading in report
    assert "ratio" in done.stdout and "summary.json" in done.stdout  # the short table went to stdout


@pytest.mark.slow
def test_quick_bench_leaves_no_process_and_no_scratch_behind(quick_run) -> None:
    done, _, scratch = quick_run
    assert done.returncode == 0, done.stderr[-5000:]
    assert _processes_mentioning(str(scratch)) == []
    assert list(scratch.glob("lambdaflow-bench-*")) == []  # its scratch folder is gone


# the arithmetic behind the rows, without running anything


def test_percentile_is_the_nearest_rank() -> None:
    from bench.core import percentile

    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([3.0], 0.99) == 3.0


def test_an_event_is_visible_from_the_first_answer_that_counts_it() -> None:
    from bench.freshness import latencies

    sent = [(10.0, 100), (10.5, 200), (11.0, 300)]
    shown = [(10.2, 50), (10.7, 150), (11.1, 250), (11.4, 300)]
    assert latencies(sent, shown) == pytest.approx([0.7, 0.6, 0.4])
    assert latencies([(12.0, 400)], shown) == []  # never shown: left out, and counted as missing


def test_raw_files_per_day_follow_the_roll_policy() -> None:
    from bench.footprint import files_per_partition_per_day

    mb64 = 64 * 1024 * 1024
    assert files_per_partition_per_day(0, 140, mb64, 300) == 289  # a quiet topic rolls on time
    # 30k events/s of 140 bytes over 3 partitions fill 64 MB in 47.9 s: 1803 rolls, plus the midnight split.
    assert files_per_partition_per_day(30_000, 140, mb64, 300) == 1804


def test_the_producers_checkpoints_merge_into_one_sequence() -> None:
    from bench.freshness import merge_checkpoints

    # Two producers, each sending to a partition of its own.
    first = [(1.0, 100, [100, 0, 0]), (3.0, 200, [200, 0, 0])]
    second = [(2.0, 100, [0, 100, 0]), (4.0, 200, [0, 200, 0])]
    assert merge_checkpoints([first, second]) == [
        (1.0, 100, [100, 0, 0]),
        (2.0, 200, [100, 100, 0]),
        (3.0, 300, [200, 100, 0]),
        (4.0, 400, [200, 200, 0]),
    ]


def test_a_peer_table_differs_by_any_row_or_metric() -> None:
    import polars as pl

    from bench.versus import differences

    ours = pl.DataFrame(
        {"event_date": ["2026-11-30"] * 2, "hour": [1, 2], "country": ["US", "DE"], "events": [5, 7]},
        schema_overrides={"hour": pl.Int32},
    )
    assert differences(ours, ours.clone()) == 0
    assert differences(ours, ours.with_columns(pl.Series("events", [5, 8]))) == 2  # one row each side
    assert differences(ours, ours.head(1)) == 1  # a row only one side has


def test_the_bare_query_takes_batch_hours_before_the_boundary_and_snapshots_from_it(tmp_path: Path) -> None:
    import duckdb

    from bench.bare_query import Files, statement

    with duckdb.connect() as con:
        for name, hours, events in (("batch", [22, 23], 10), ("speed", [22, 23, 24], 1)):
            con.execute(f"""
                copy (
                    select cast(date '2026-11-30' + to_days(h // 24) as date) as event_date,
                           cast(h % 24 as integer) as hour, 'US' as country, cast({events} as bigint) as events
                    from unnest({hours}) as t(h)
                ) to '{tmp_path / name}.parquet'
            """)
        files = Files(
            batch_files=[str(tmp_path / "batch.parquet")],
            speed_snapshots=[str(tmp_path / "speed.parquet")],
            boundary="2026-11-30T23:00:00",
            metrics=["events"],
            date_from="2026-11-29",
            date_to="2026-12-01",
        )
        sql, values = statement(files)
        rows = con.execute(sql, values).fetchall()
    # 22:00 from the batch (10), 23:00 and the next day's 00:00 from the snapshots (1 each)
    assert [(day.isoformat(), events) for day, events in rows] == [("2026-11-30", 11), ("2026-12-01", 1)]
