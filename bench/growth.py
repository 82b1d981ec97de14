"""State growth: the same events counted on an empty speed state and on top of a day of history.

One UTC day (yesterday, so the run does not depend on the time of day): its
last two hours hold the events measured (300k in full mode), the 22 hours
before them the history (6M). The same users appear in both, so the measured
events meet stored dedupe keys and first-seen user-days of their own day, as a
stream worker late in a busy day does.

Two topics on one embedded broker: *history* gets the history, and the
benchmark lets `lambdaflow stream --until-idle` count it once into a data
directory, which it then keeps as it is; then the measured events are sent to
both topics, *today* (nothing else in it) and *history*. In every repetition,
in rotating order, `lambdaflow stream --until-idle` counts them on an empty
state (topic today, a fresh data directory) and on top of the history (topic
history, a fresh copy of the kept data directory: the worker resumes at its
stored offsets and reads only the measured events). Each run's *counting
seconds* are its own seconds less those of the same command counting a small
topic (300 events) on an empty state: the fixed part (the group join, noticing
it has caught up, closing) of a run that takes the same path. Whatever the
history costs, opening it included, stays in the history run's figure.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from bench import plots
from bench.core import TOO_SHORT, Context, Row, Section, alternate, median, too_short
from bench.feed import Sent, create_topic, send_events
from bench.procs import stream_until_idle, worker_env
from lambdaflow.kafka.broker import EmbeddedBroker

log = logging.getLogger("lambdaflow.bench")

TARGET_RATIO = 1.2
SEED = 11
HISTORY_SEED = 1_000  # chunks take seeds from here up, apart from the measured events' seed
TODAY, HISTORY, SMALL = "bench-growth-today", "bench-growth-history", "bench-growth-small"
SMALL_EVENTS = 300
VARIANTS = ("empty state", "on top of the history")


def _count(ctx: Context, bootstrap: str, topic: str, data_dir: Path, name: str) -> dict:
    """`lambdaflow stream --until-idle` to the end: its summary, wall time and peak RSS."""
    return stream_until_idle(name, worker_env(ctx.env, bootstrap, topic, data_dir), ctx.folder("growth", "logs"))


def _state_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "speed").rglob("*.duckdb*") if p.is_file())


def run_section(ctx: Context) -> Section:
    sizes = ctx.sizes
    day = datetime.now(UTC).date() - timedelta(days=1)
    midnight = datetime.combine(day, time(0), tzinfo=UTC)
    split, end = midnight + timedelta(hours=22), midnight + timedelta(days=1)
    work = ctx.folder("growth")
    logs = ctx.folder("growth", "logs")
    with EmbeddedBroker(log_path=logs / "tansu.log") as broker:
        for topic in (TODAY, HISTORY, SMALL):
            create_topic(broker.bootstrap, topic)
        log.info("growth: sending %d events of history (%s, 00:00 to 22:00)", sizes.growth_history_events, day)
        history_sent = send_events(
            broker.bootstrap, [HISTORY], sizes.growth_history_events, HISTORY_SEED, midnight, split
        )
        kept = work / "history-kept"
        history = _count(ctx, broker.bootstrap, HISTORY, kept, "count-history")
        if history["new_events"] != sizes.growth_history_events:
            raise RuntimeError(f"growth: the history run counted {history['new_events']} events")
        history_state = _state_bytes(kept)
        log.info("growth: history counted in %.1f s, %.0f MB of state", history["seconds"], history_state / 1e6)
        measured_sent = send_events(broker.bootstrap, [TODAY, HISTORY], sizes.growth_events, SEED, split, end)
        send_events(broker.bootstrap, [SMALL], SMALL_EVENTS, SEED + 1, split, end)
        baseline = _count(ctx, broker.bootstrap, SMALL, work / "small-topic", "count-small-topic")
        reps = []
        for rep in range(sizes.repetitions):
            result = {}
            for variant in alternate(VARIANTS, rep):
                if variant == VARIANTS[0]:
                    data_dir, topic = work / f"empty-{rep}", TODAY
                else:
                    data_dir, topic = work / f"history-{rep}", HISTORY
                    shutil.copytree(kept, data_dir)
                counted = _count(ctx, broker.bootstrap, topic, data_dir, f"count-{variant.split()[0]}-{rep}")
                if counted["new_events"] != sizes.growth_events:
                    raise RuntimeError(f"growth: {variant} counted {counted['new_events']} of {sizes.growth_events}")
                counted["counting_seconds"] = round(max(counted["seconds"] - baseline["seconds"], 1e-3), 3)
                counted["events_per_second"] = round((sizes.growth_events - SMALL_EVENTS) / counted["counting_seconds"])
                result[variant] = counted
                shutil.rmtree(data_dir, ignore_errors=True)
            reps.append(result)
            log.info(
                "growth rep %d: %.2f s on an empty state, %.2f s on top of the history",
                rep + 1,
                result[VARIANTS[0]]["counting_seconds"],
                result[VARIANTS[1]]["counting_seconds"],
            )
    return _summarize(ctx, reps, baseline, history, history_state, history_sent, measured_sent)


def _summarize(
    ctx: Context,
    reps: list[dict],
    baseline: dict,
    history: dict,
    history_state: int,
    history_sent: Sent,
    measured_sent: Sent,
) -> Section:
    sizes = ctx.sizes
    empty = median(r[VARIANTS[0]]["counting_seconds"] for r in reps)
    on_top = median(r[VARIANTS[1]]["counting_seconds"] for r in reps)
    ratio = median(r[VARIANTS[1]]["counting_seconds"] / r[VARIANTS[0]]["counting_seconds"] for r in reps)
    short = too_short(r[v]["counting_seconds"] for r in reps for v in VARIANTS)
    met = ratio <= TARGET_RATIO and not short
    row = Row(
        id="growth.ratio",
        what=f"state growth: {sizes.growth_events:,} events counted on top of {sizes.growth_history_events:,}",
        figure=round(on_top, 3),
        unit="s",
        peer="the same events on an empty state",
        peer_figure=round(empty, 3),
        ratio=round(ratio, 3),
        target=f"ratio <= {TARGET_RATIO}",
        met=met,
        why=""
        if met
        else TOO_SHORT
        if short
        else (
            f"{ratio:.2f}x, {ratio - TARGET_RATIO:.2f} over the target: with {sizes.growth_history_events:,} events "
            f"of the same day in the state ({history_state / 1e6:.0f} MB), counting the same events took "
            f"{on_top:.1f} s instead of {empty:.1f} s, so the speed state's cost per event grows with what it holds"
        ),
        detail={
            "events_per_second_empty": round((sizes.growth_events - SMALL_EVENTS) / empty),
            "events_per_second_on_top": round((sizes.growth_events - SMALL_EVENTS) / on_top),
            "history_state_mb": round(history_state / 1e6, 1),
            "startup_own_seconds": baseline["seconds"],
        },
    )
    details = {
        "repetitions": reps,
        "small_topic": baseline,
        "history_run": history,
        "history_state_bytes": history_state,
        "history_sent": history_sent.__dict__,
        "measured_sent": measured_sent.__dict__,
    }
    lines = [
        f"{sizes.growth_history_events:,} events of history (yesterday 00:00 to 22:00 UTC) were sent at "
        f"{history_sent.per_second:,.0f} msg/s and counted once by `lambdaflow stream --until-idle` in "
        f"{history['seconds']:.1f} s ({history_state / 1e6:.0f} MB of state); then the same "
        f"{sizes.growth_events:,} events (22:00 to 24:00, the same users) went to both topics.",
        "",
        "*Counting seconds* = the run's own seconds (its summary) less the own seconds of the same command "
        f"counting {SMALL_EVENTS} events on an empty state ({baseline['seconds']:.2f} s: the group join, noticing "
        "it has caught up, closing). Each run starts 7 s after the one before, once the broker has let the "
        "previous member of group `speed` go (a run that started sooner would wait for that in its join). "
        "Repetitions alternate which variant goes first.",
        "",
        "| repetition | empty state s | on top of the history s | ratio | peak RSS MB (empty / history) |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, rep in enumerate(reps, 1):
        a, b = rep[VARIANTS[0]], rep[VARIANTS[1]]
        lines.append(
            f"| {i} | {a['counting_seconds']:.2f} | {b['counting_seconds']:.2f} | "
            f"{b['counting_seconds'] / a['counting_seconds']:.2f} | {a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} |"
        )
    lines += ["", f"Medians: {empty:.2f} s and {on_top:.2f} s; the row's ratio is the median of the ratios."]
    return Section(
        7,
        "State growth",
        [row],
        "\n".join(lines),
        details,
        plots=[
            lambda out: plots.bars(
                out / "growth.png",
                f"State growth: {sizes.growth_events:,} events counted (median, dots: repetitions)",
                list(VARIANTS),
                [empty, on_top],
                [[r[v]["counting_seconds"] for r in reps] for v in VARIANTS],
                "seconds",
                reference=(TARGET_RATIO * empty, f"{TARGET_RATIO} x the empty state"),
            )
        ],
    )
