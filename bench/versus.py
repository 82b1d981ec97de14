"""The peer: the same hourly metrics by lambdaflow's stream worker and by quixstreams, side by side.

One topic on an embedded broker (created with the retention configs
quixstreams asks of an input topic) holds the events: two hours up to now,
every 50th sent twice, as a producer's retry would. In every repetition, in
rotating order, `lambdaflow stream --until-idle` counts them into a fresh data
directory, and the quixstreams application of :mod:`bench.peer` counts them in
a consumer group and state directory of its own; each runs in a process of its
own, started and stopped by its PID.

*Messages/s* is the messages read over the counting seconds, measured alike
for both: a run's own seconds (from before it creates its consumer to its
end, as each reports) less those of the same command counting a small topic
of 300 events, the fixed part of a run (the group join, noticing it has
caught up or has processed every message, the last commit, closing). Both
count the same table or the row fails: the peer's hourly rows must equal the sum of lambdaflow's partition
snapshots, metric by metric, hour by hour, country by country.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from bench import plots
from bench.core import TOO_SHORT, Context, Row, Section, alternate, median, too_short
from bench.feed import Sent, create_topic, send_events
from bench.peer import INPUT_CONFIGS
from bench.procs import run, stream_until_idle, worker_env
from lambdaflow.core.metrics import load
from lambdaflow.kafka.broker import EmbeddedBroker

log = logging.getLogger("lambdaflow.bench")

SEED = 13
DUPLICATE_EVERY = 50
TOPIC, SMALL = "bench-peer", "bench-peer-small"
SMALL_EVENTS = 300
TOOLS = ("lambdaflow stream", "quixstreams")


def _lambdaflow(ctx: Context, bootstrap: str, topic: str, data_dir: Path, name: str) -> dict:
    return stream_until_idle(name, worker_env(ctx.env, bootstrap, topic, data_dir), ctx.folder("peer", "logs"))


def _quixstreams(ctx: Context, bootstrap: str, topic: str, messages: int, rep: str) -> tuple[dict, Path]:
    out = ctx.work / "peer" / f"quixstreams-{rep}.json"
    args = [
        sys.executable,
        "-m",
        "bench.peer",
        "--messages",
        str(messages),
        "--group",
        f"bench-peer-{uuid.uuid4().hex[:8]}",
        "--out",
        str(out),
        "--state-dir",
        str(ctx.folder("peer", f"quixstreams-state-{rep}")),
    ]
    env = worker_env(ctx.env, bootstrap, topic, ctx.work / "peer" / "unused")
    done = run(f"quixstreams-{rep}", args, env, ctx.folder("peer", "logs"), timeout=3600)
    return {**done.json(), "wall_seconds": round(done.wall_seconds, 3), "peak_rss_mb": round(done.peak_rss_mb, 1)}, out


def lambdaflow_rows(data_dir: Path, topic: str) -> pl.DataFrame:
    """The hourly rows lambdaflow counted: its partition snapshots, summed."""
    names = [m.name for m in load()]
    snapshots = sorted((data_dir / "speed" / topic / "snapshots").glob("partition-*.parquet"))
    frame = pl.concat([pl.read_parquet(path) for path in snapshots])
    return (
        frame.with_columns(pl.col("event_date").cast(pl.String))
        .group_by("event_date", "hour", "country")
        .agg(pl.col(name).sum() for name in names)
        .filter(pl.any_horizontal(pl.col(name) != 0 for name in names))
    )


def peer_rows(path: Path) -> pl.DataFrame:
    names = [m.name for m in load()]
    rows = json.loads(path.read_text())
    return pl.DataFrame(
        rows,
        schema={"event_date": pl.String, "hour": pl.Int32, "country": pl.String, **dict.fromkeys(names, pl.Int64)},
    )


def differences(ours: pl.DataFrame, theirs: pl.DataFrame) -> int:
    """How many (day, hour, country) rows differ in any metric, counting rows only one side has."""
    keys = ["event_date", "hour", "country"]
    columns = keys + [c for c in theirs.columns if c not in keys]
    a = ours.select(columns).with_columns(pl.col("hour").cast(pl.Int32))
    b = theirs.select(columns)
    return a.join(b, on=columns, how="anti").height + b.join(a, on=columns, how="anti").height


def run_section(ctx: Context) -> Section:
    sizes = ctx.sizes
    logs = ctx.folder("peer", "logs")
    now = datetime.now(UTC)
    with EmbeddedBroker(log_path=logs / "tansu.log") as broker:
        create_topic(broker.bootstrap, TOPIC, configs=INPUT_CONFIGS)
        create_topic(broker.bootstrap, SMALL, configs=INPUT_CONFIGS)
        send_events(broker.bootstrap, [SMALL], SMALL_EVENTS, SEED + 1, now - timedelta(hours=2), now)
        log.info("peer: sending %d events (every %dth twice)", sizes.peer_events, DUPLICATE_EVERY)
        sent = send_events(
            broker.bootstrap, [TOPIC], sizes.peer_events, SEED, now - timedelta(hours=2), now, DUPLICATE_EVERY
        )
        baseline = {
            TOOLS[0]: _lambdaflow(ctx, broker.bootstrap, SMALL, ctx.work / "peer" / "small", "lambdaflow-small"),
            TOOLS[1]: _quixstreams(ctx, broker.bootstrap, SMALL, SMALL_EVENTS, "small")[0],
        }
        reps, differing = [], []
        for rep in range(sizes.repetitions):
            result = {}
            for tool in alternate(TOOLS, rep):
                if tool == TOOLS[0]:
                    data_dir = ctx.work / "peer" / f"lambdaflow-{rep}"
                    counted = _lambdaflow(ctx, broker.bootstrap, TOPIC, data_dir, f"lambdaflow-{rep}")
                    ours = lambdaflow_rows(data_dir, TOPIC)
                else:
                    counted, out = _quixstreams(ctx, broker.bootstrap, TOPIC, sent.messages, str(rep))
                    theirs = peer_rows(out)
                if counted["messages"] != sent.messages:
                    raise RuntimeError(f"peer: {tool} read {counted['messages']} of {sent.messages} messages")
                counted["counting_seconds"] = round(max(counted["seconds"] - baseline[tool]["seconds"], 1e-3), 3)
                counted["events_per_second"] = round((sent.messages - SMALL_EVENTS) / counted["counting_seconds"])
                result[tool] = counted
            differing.append(differences(ours, theirs))
            reps.append(result)
            log.info(
                "peer rep %d: lambdaflow %d msg/s, quixstreams %d msg/s, %d rows differ",
                rep + 1,
                result[TOOLS[0]]["events_per_second"],
                result[TOOLS[1]]["events_per_second"],
                differing[-1],
            )
    return _summarize(ctx, reps, differing, sent, baseline, ours.height)


def _summarize(
    ctx: Context, reps: list[dict], differing: list[int], sent: Sent, baseline: dict[str, dict], rows: int
) -> Section:
    ours = median(r[TOOLS[0]]["events_per_second"] for r in reps)
    theirs = median(r[TOOLS[1]]["events_per_second"] for r in reps)
    ratio = median(r[TOOLS[0]]["events_per_second"] / r[TOOLS[1]]["events_per_second"] for r in reps)
    same = not any(differing)
    short = too_short(r[t]["counting_seconds"] for r in reps for t in TOOLS)
    met = ratio > 1.0 and same and not short
    if short:
        why = TOO_SHORT
    elif not same:
        why = f"the two counted different tables ({max(differing)} hourly rows differ), so the comparison does not hold"
    elif not met:
        why = f"quixstreams counted the same metrics {1 / ratio:.2f}x as fast as lambdaflow's stream worker"
    else:
        why = ""
    row = Row(
        id="peer.quixstreams",
        what="peer: the hourly metrics (dedupe, first-seen users, hourly sums), lambdaflow stream msgs/s",
        figure=round(ours),
        unit="msg/s",
        peer="quixstreams, the same job on the same topic",
        peer_figure=round(theirs),
        ratio=round(ratio, 3),
        target="ratio > 1 (lambdaflow ahead), same table",
        met=met,
        why=why,
        detail={
            "same_table": same,
            "hourly_rows": rows,
            "peak_rss_mb": median(r[TOOLS[0]]["peak_rss_mb"] for r in reps),
            "peer_peak_rss_mb": median(r[TOOLS[1]]["peak_rss_mb"] for r in reps),
            "wall_seconds": median(r[TOOLS[0]]["wall_seconds"] for r in reps),
            "peer_wall_seconds": median(r[TOOLS[1]]["wall_seconds"] for r in reps),
        },
    )
    lines = [
        f"{sent.events:,} events over the two hours up to the run, every {DUPLICATE_EVERY}th sent twice: "
        f"{sent.messages:,} messages to 3 partitions. Both count every metric of the definition "
        "(`dbt_project.yml`, `vars.metrics`) per UTC hour and country, the first copy of an event only; "
        "quixstreams keeps its dedupe keys and first-seen user-days in its state keyed by the user, and sums "
        "per hour and country in state after a `group_by` (its repartition topic). Its changelog topics are off, "
        "and it applies no event contract (every event here is valid); lambdaflow classifies every message "
        "with the contract first.",
        "",
        f"The two tables are {'identical' if same else 'NOT identical'} ({rows:,} hourly rows).",
        "",
        "| repetition | lambdaflow msg/s | counting s | quixstreams msg/s | counting s "
        "| peak RSS MB (lambdaflow / quixstreams) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, rep in enumerate(reps, 1):
        a, b = rep[TOOLS[0]], rep[TOOLS[1]]
        lines.append(
            f"| {i} | {a['events_per_second']:,} | {a['counting_seconds']:.2f} | {b['events_per_second']:,} | "
            f"{b['counting_seconds']:.2f} | {a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"The fixed part, from the {SMALL_EVENTS}-event topic: lambdaflow {baseline[TOOLS[0]]['seconds']:.2f} s, "
        f"quixstreams {baseline[TOOLS[1]]['seconds']:.2f} s (its first message came "
        f"{median(r[TOOLS[1]]['first_message_after'] for r in reps):.1f} s after it created its application, "
        "in the median run).",
    ]
    return Section(
        8,
        "Peer: quixstreams",
        [row],
        "\n".join(lines),
        {"repetitions": reps, "differing_rows": differing, "sent": sent.__dict__, "small_topic": baseline},
        plots=[
            lambda out: plots.bars(
                out / "peer.png",
                "The hourly metrics: messages/s while counting (median, dots: repetitions)",
                list(TOOLS),
                [ours, theirs],
                [[r[t]["events_per_second"] for r in reps] for t in TOOLS],
                "messages/s",
            )
        ],
    )
