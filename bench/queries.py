"""4. Queries: serving answers for a 7-day range, idle and while the layers write.

The data directory holds built batch days (published files and a boundary at
the start of today) and, for today, the snapshots of a stream worker. In
process, this asks `lambdaflow.serving.query.answer` (what `lambdaflow query`
runs) for the last 7 days again and again, in blocks that alternate between
*busy* (a live producer feeding the stream worker, which replaces its
snapshots after every micro-batch, and a loop rebuilding yesterday with dbt,
which republishes the day and swaps the manifest) and *idle* (the producer and
the rebuild loop stopped with SIGSTOP; the worker, with nothing to read, only
polls). The load is started once and paused rather than restarted, so each
block costs only its queries.

Each answer is paired with a bare DuckDB query over the same files, asked right
after it in the same block: one hand-written statement that sums the published
batch hours before the boundary and the snapshots' hours from it on, per day, on
one DuckDB connection opened once, with the file lists taken from the manifest
untimed just before (what any reader of these files needs at the least). The
target is an answer's p99 within 2x of the bare query's, idle and busy alike.
"""

from __future__ import annotations

import cProfile
import logging
import pstats
import signal
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from bench import plots
from bench.bare_query import SETTINGS, Files, pinned, statement
from bench.batch_build import dbt_env
from bench.core import Context, Row, Section, percentile
from bench.events import TOPIC
from bench.history import build_directly, past_days, write_history
from bench.procs import bench_child, bench_command, run
from bench.queries_s3 import TEXT as S3_TEXT
from bench.queries_s3 import s3_rows
from lambdaflow.core import metrics
from lambdaflow.core.config import Settings
from lambdaflow.kafka import clients
from lambdaflow.kafka.broker import EmbeddedBroker
from lambdaflow.ops.processes import Child, lambdaflow_command, tail
from lambdaflow.serving.query import Question, ServingInputs, answer

log = logging.getLogger("lambdaflow.bench")

TARGET_RATIO = 2.0
"""An answer's p99 (in process) against the bare DuckDB query's; `lambdaflow query` against a bare process."""
WARM_UP = 5
SETTLE_SECONDS = 1.0


def run_section(ctx: Context, history: Path | None = None) -> Section:
    if history is None:
        history = ctx.folder("queries", "data")
        days = past_days(6)
        write_history(history, days, ctx.sizes.backfill_events_per_day)
        build_directly(ctx, history, days, "queries-history")
    today = datetime.now(UTC).date()
    question = Question(today - timedelta(days=6), today)
    logs = ctx.folder("queries", "logs")
    rate = "500" if ctx.quick else "2000"
    with EmbeddedBroker(log_path=logs / "tansu.log") as broker:
        clients.ensure_topic(broker.bootstrap, TOPIC, 3)
        env = {**dbt_env(ctx, history, "queries"), "KAFKA_BOOTSTRAP": broker.bootstrap, "LAMBDAFLOW_TOPIC": TOPIC}
        settings = Settings.from_env(env)
        load = [
            bench_child("stream-worker", lambdaflow_command("stream"), env, logs),
            bench_child("producer", lambdaflow_command("produce", "--live", "--rate", rate), env, logs),
            bench_child(
                "rebuild-loop",
                bench_command("rebuild-loop", "--day", (today - timedelta(days=1)).isoformat()),
                env,
                logs,
            ),
        ]
        try:
            for child in load:
                child.start()
            _wait_for_load(history, load)
            samples, bare_samples, same = _alternate(ctx, settings, question, load)
            builds = load[2].stdout_path.read_text().count('"built"')
        finally:
            for child in load:
                if child.process is not None:
                    _resume(child)
                    child.stop(grace=60)
    cli, bare_cli = _cli_runs(ctx, env, question, logs)
    inputs = ServingInputs.current(settings)
    read = inputs.within(question.date_from, question.date_to)
    files = {
        "batch_days": len(inputs.batch_files),
        "snapshots": len(inputs.speed_snapshots),
        "batch_files_read": len(read.batch_files),
        "snapshots_read": len(read.speed_snapshots),
    }
    section = _summarize(ctx, samples, bare_samples, same, (cli, bare_cli), builds, settings, question, rate, files)
    section.rows += s3_rows(ctx, settings, question)
    section.text += S3_TEXT
    return section


def _wait_for_load(history: Path, load: list[Child], timeout: float = 300) -> None:
    """Busy means busy: the worker has published snapshots and the rebuild loop has finished a build."""
    snapshots = history / "speed" / TOPIC / "snapshots"
    deadline = time.monotonic() + timeout
    while len(list(snapshots.glob("partition-*.parquet"))) < 3 or '"built"' not in load[2].stdout_path.read_text():
        for child in load:
            if not child.running():
                raise RuntimeError(f"{child.name} stopped while the load started:\n{tail(child.log_path)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the query benchmark's load did not start in {timeout:.0f} s")
        time.sleep(0.2)


def _pause(child: Child) -> None:
    child.signal_group(signal.SIGSTOP)


def _resume(child: Child) -> None:
    child.signal_group(signal.SIGCONT)


def published_files(settings: Settings, question: Question) -> Files:
    """The range's published files, from the manifest as the serving layer reads it (untimed)."""
    inputs = ServingInputs.current(settings).within(question.date_from, question.date_to)
    return Files(
        batch_files=[str(p) for p in inputs.batch_files],
        speed_snapshots=[str(p) for p in inputs.speed_snapshots],
        boundary=inputs.boundary.isoformat() if inputs.boundary else None,
        metrics=list(metrics.names()),
        date_from=question.date_from.isoformat(),
        date_to=question.date_to.isoformat(),
    )


class Bare:
    """The bare DuckDB query (:mod:`bench.bare_query`) on one connection opened once."""

    def __init__(self, settings: Settings, question: Question) -> None:
        self.settings, self.question = settings, question
        self.con = duckdb.connect()
        self.con.execute(SETTINGS).fetchall()

    def ask(self) -> tuple[float, list[tuple]]:
        """One query, timed; listed again when a rebuild swapped a file away in between."""
        for attempt in range(5):
            files = published_files(self.settings, self.question)
            started = time.perf_counter()
            try:
                with pinned(files) as files_now:
                    sql, values = statement(files_now)
                    rows = self.con.execute(sql, values).fetchall()
            except FileNotFoundError:
                if attempt == 4:
                    raise
                continue
            return time.perf_counter() - started, rows
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.con.close()


def same_answer(settings: Settings, question: Question, bare: Bare) -> bool:
    """Do the answer and the bare query give the same totals per day (days with events)?"""
    answered = {
        row["event_date"]: tuple(row[name] or 0 for name in metrics.names())
        for row in answer(settings, question)
        if any(row[name] for name in metrics.names())
    }
    _, rows = bare.ask()
    barely = {day.isoformat(): tuple(v or 0 for v in values) for day, *values in rows if any(values)}
    for day in sorted(set(answered) | set(barely)):
        if answered.get(day) != barely.get(day):
            log.warning("queries: %s answered %s, the bare query %s", day, answered.get(day), barely.get(day))
    return answered == barely


def _alternate(
    ctx: Context, settings: Settings, question: Question, load: list[Child]
) -> tuple[dict[str, list[float]], dict[str, list[float]], bool]:
    bare = Bare(settings, question)
    try:
        for _ in range(WARM_UP):
            answer(settings, question)
            bare.ask()
        samples: dict[str, list[float]] = {"idle": [], "busy": []}
        bare_samples: dict[str, list[float]] = {"idle": [], "busy": []}
        same = True
        writers = load[1:]
        for rep in range(ctx.sizes.repetitions):
            for condition in ("busy", "idle"):
                for child in writers:
                    (_resume if condition == "busy" else _pause)(child)
                time.sleep(SETTLE_SECONDS)
                if condition == "idle":
                    same = same and same_answer(settings, question, bare)
                block, bare_block = _block(settings, question, ctx.sizes.queries_per_block, bare)
                samples[condition] += block
                bare_samples[condition] += bare_block
                log.info(
                    "queries rep %d %s: p50 %.1f ms, p99 %.1f ms; bare DuckDB p50 %.1f ms, p99 %.1f ms",
                    rep + 1,
                    condition,
                    percentile(block, 0.5) * 1000,
                    percentile(block, 0.99) * 1000,
                    percentile(bare_block, 0.5) * 1000,
                    percentile(bare_block, 0.99) * 1000,
                )
        for child in writers:
            _resume(child)
    finally:
        bare.close()
    return samples, bare_samples, same


def _block(settings: Settings, question: Question, count: int, bare: Bare) -> tuple[list[float], list[float]]:
    """``count`` answers, each followed by a bare query."""
    times, bare_times = [], []
    for _ in range(count):
        started = time.perf_counter()
        answer(settings, question)
        times.append(time.perf_counter() - started)
        bare_times.append(bare.ask()[0])
    return times, bare_times


def _cli_runs(ctx: Context, env: dict, question: Question, logs: Path) -> tuple[list[float], list[float]]:
    """`lambdaflow query` end to end, as a user runs it (the interpreter, imports, one answer), each run
    followed by the bare query in a process of its own (the interpreter, importing DuckDB, the query)."""
    args = lambdaflow_command("query", "--from", question.date_from.isoformat(), "--to", question.date_to.isoformat())
    files = ctx.work / "queries" / "bare-files.json"
    cli, bare = [], []
    for i in range(3 if ctx.quick else 5):
        cli.append(run(f"cli-query-{i}", args, env, logs, timeout=120).wall_seconds)
        published_files(Settings.from_env(env), question).save(files)
        bare_args = bench_command("bare-query", str(files))
        bare.append(run(f"bare-query-{i}", bare_args, env, logs, timeout=120).wall_seconds)
    return cli, bare


def profile_answers(settings: Settings, question: Question, count: int = 20, keep: int = 8) -> list[dict]:
    """cProfile of ``count`` answers: the functions with the most cumulative time per answer."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        answer(settings, question)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]  # the table, undocumented
    total = max(cumulative for _, _, _, cumulative, _ in stats.values())
    rows = []
    for (path, line, function), (_, _, own, cumulative, _) in stats.items():
        if cumulative < 0.03 * total:
            continue
        where = "/".join(Path(path).parts[-2:]) if path != "~" else ""
        rows.append(
            {
                "function": f"{where}:{line}({function})" if where else function,
                "ms_per_answer": round(cumulative / count * 1000, 2),
                "share": round(cumulative / total, 3),
                "own_ms_per_answer": round(own / count * 1000, 2),
            }
        )
    rows.sort(key=lambda row: row["ms_per_answer"], reverse=True)
    return rows[:keep]


def _stats(values: list[float]) -> dict:
    return {"p50_ms": percentile(values, 0.5) * 1000, "p99_ms": percentile(values, 0.99) * 1000, "n": len(values)}


def _summarize(
    ctx: Context,
    samples: dict,
    bare_samples: dict,
    same: bool,
    cli_runs: tuple[list[float], list[float]],
    builds: int,
    settings: Settings,
    question: Question,
    rate: str,
    files: dict[str, int],
) -> Section:
    stats = {c: _stats(v) for c, v in samples.items()}
    bare = {c: _stats(v) for c, v in bare_samples.items()}
    ratios = {c: stats[c]["p99_ms"] / bare[c]["p99_ms"] for c in stats}
    missed = any(r > TARGET_RATIO for r in ratios.values())
    profile = profile_answers(settings, question) if missed else []
    rows = []
    for condition in ("idle", "busy"):
        s, b = stats[condition], bare[condition]
        met = ratios[condition] <= TARGET_RATIO and same
        if not same:
            why = "the answer and the bare DuckDB query gave different totals, so the comparison does not hold"
        else:
            why = "" if met else _why(condition, s, b, profile, files)
        rows.append(
            Row(
                id=f"queries.{condition}",
                what=f"queries: 7-day serving answer in process, p99, {condition}",
                figure=round(s["p99_ms"], 2),
                unit="ms",
                peer="a bare DuckDB query over the same files, p99",
                peer_figure=round(b["p99_ms"], 2),
                ratio=round(ratios[condition], 3),
                target=f"ratio <= {TARGET_RATIO:g}",
                met=met,
                why=why,
                detail={
                    "p50_ms": round(s["p50_ms"], 2),
                    "bare_p50_ms": round(b["p50_ms"], 2),
                    "answers": s["n"],
                    "same_answer": same,
                },
            )
        )
    cli, bare_cli = cli_runs
    cli_ms, bare_cli_ms = statistics.median(cli) * 1000, statistics.median(bare_cli) * 1000
    cli_ratio = cli_ms / bare_cli_ms
    cli_met = cli_ratio <= TARGET_RATIO
    rows.append(
        Row(
            id="queries.cli",
            what="queries: `lambdaflow query` wall time (start-up included)",
            figure=round(cli_ms, 1),
            unit="ms",
            peer="the bare DuckDB query in a fresh process",
            peer_figure=round(bare_cli_ms, 1),
            ratio=round(cli_ratio, 3),
            target=f"ratio <= {TARGET_RATIO:g}",
            met=cli_met,
            why=""
            if cli_met
            else (
                f"{cli_ratio:.2f}x: the answer itself takes {stats['idle']['p50_ms']:.0f} ms (idle p50); the rest "
                "of `lambdaflow query` is its start-up, the interpreter and its imports (polars, duckdb, jinja2, "
                "click), where the bare process imports DuckDB alone"
            ),
            detail={
                "runs_ms": [round(c * 1000, 1) for c in cli],
                "bare_runs_ms": [round(c * 1000, 1) for c in bare_cli],
            },
        )
    )
    text = _text(stats, bare, same, cli_ms, bare_cli_ms, builds, profile, rate, files)
    details = {
        "stats": stats,
        "bare_stats": bare,
        "same_answer": same,
        "cli_seconds": cli,
        "bare_cli_seconds": bare_cli,
        "rebuilds_during_run": builds,
        "profile": profile,
        "files_read": files,
    }
    return Section(
        4,
        "Queries",
        rows,
        text,
        details,
        plots=[
            lambda out: plots.distribution(
                out / "queries_latency.png",
                "Queries: 7-day answer in process and the bare DuckDB query (CDF)",
                {
                    **{f"answer, {c}": [v * 1000 for v in samples[c]] for c in ("idle", "busy")},
                    **{f"bare DuckDB, {c}": [v * 1000 for v in bare_samples[c]] for c in ("idle", "busy")},
                },
                "ms",
            ),
        ],
    )


def _why(condition: str, s: dict, b: dict, profile: list[dict], files: dict[str, int]) -> str:
    load = ", and it shares two cores with the worker, the producer and dbt" if condition == "busy" else ""
    heaviest = "; ".join(
        f"`{p['function']}` {p['ms_per_answer']:.1f} ms (own {p['own_ms_per_answer']:.1f})" for p in profile[:3]
    )
    return (
        f"p99 {s['p99_ms']:.0f} ms against the bare query's {b['p99_ms']:.0f} ms, "
        f"{s['p99_ms'] / b['p99_ms']:.2f}x{load}; the median answer takes {s['p50_ms']:.0f} ms, the bare query "
        f"{b['p50_ms']:.0f} ms. An answer reads {files['batch_files_read']} batch files and "
        f"{files['snapshots_read']} snapshots; per answer (cProfile, idle): {heaviest or 'no function stands out'}"
    )


def _text(
    stats: dict,
    bare: dict,
    same: bool,
    cli_ms: float,
    bare_cli_ms: float,
    builds: int,
    profile: list[dict],
    rate: str,
    files: dict[str, int],
) -> str:
    lines = [
        f"A 7-day range (batch days and today from the speed layer; {files['batch_days']} published batch days "
        f"and {files['snapshots']} snapshots in the data directory, of which an answer reads the range's "
        f"{files['batch_files_read']} batch files and {files['snapshots_read']} snapshots) asked in process "
        "with `lambdaflow.serving.query.answer`, timed with `perf_counter` around the call, in blocks alternating "
        f"busy and idle. Busy: `lambdaflow produce --live --rate {rate}` feeding `lambdaflow stream`, and a "
        f"loop of dbt builds of yesterday ({builds} builds finished during the run). Idle: producer and "
        "rebuild loop stopped with SIGSTOP; the worker only polls.",
        "",
        "Each answer was followed by the bare DuckDB query of `bench/bare_query.py` over the same files (the "
        "range's published batch files and snapshots, listed from the manifest untimed just before): batch "
        "hours before the boundary and snapshot hours from it on, summed per day, on one connection opened "
        f"once. Its totals and the answer's were {'the same' if same else 'NOT the same'} (checked at the start "
        "of every idle block).",
        "",
        "| condition | answers | p50 ms | p99 ms | bare p50 ms | bare p99 ms | p99 ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for condition in ("idle", "busy"):
        s, b = stats[condition], bare[condition]
        lines.append(
            f"| {condition} | {s['n']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {b['p50_ms']:.1f} | "
            f"{b['p99_ms']:.1f} | {s['p99_ms'] / b['p99_ms']:.2f} |"
        )
    lines += [
        "",
        f"`lambdaflow query` for the same range, end to end in a fresh process (idle): median "
        f"{cli_ms:.0f} ms, of which about {cli_ms - stats['idle']['p50_ms']:.0f} ms is start-up; the bare query "
        f"in a fresh process (`python -m bench.child bare-query`: the interpreter, importing DuckDB, the query) "
        f"{bare_cli_ms:.0f} ms.",
    ]
    if profile:
        lines += [
            "",
            "The target is missed, so 20 idle answers were run under cProfile; the functions with the "
            "most cumulative time per answer (own: in the function itself, which for `answer` is DuckDB's C++ "
            "code planning and running the query):",
            "",
            "| function | ms per answer | own ms | share |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{p['function']}` | {p['ms_per_answer']:.1f} | {p['own_ms_per_answer']:.1f} | {p['share']:.0%} |"
            for p in profile
        ]
    return "\n".join(lines)
