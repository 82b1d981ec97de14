"""1. Ingest ceiling: a bare kafka-python consumer vs the archiver vs the stream worker.

The archiver runs twice in each repetition: into a local directory, and into a
bucket of a local S3-compatible server (moto's, started by the section and
stopped by its PID), so the cost of committing the raw tables to object storage
is measured against the local directory side by side.

The events are produced once to a topic of an embedded broker the benchmark
starts; then, in every repetition and in rotating order, each consumer reads
all of it in a process of its own (`lambdaflow archive --until-idle` and
`lambdaflow stream --until-idle` into a fresh data directory, the bare consumer
in a fresh consumer group). Each reports when its first records arrived and
when it was done; the rate is counted between the two, so the interpreter's
start, the group join (which this broker holds for half the session timeout)
and the first poll's fetch are left out on every side alike. Each archiver and
stream worker run starts 7 s after the last one of its group ended (the broker
lets a member that left go only after its session timeout; a run that started
sooner would wait for that in its join).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import plots, profiling
from bench.core import TOO_SHORT, Context, Row, Section, alternate, median, too_short
from bench.events import kafka_messages
from bench.procs import bench_command, run, settle
from lambdaflow.kafka import clients
from lambdaflow.kafka.broker import EmbeddedBroker
from lambdaflow.ops.object_store import LocalS3Server
from lambdaflow.ops.processes import Finished, lambdaflow_command

log = logging.getLogger("lambdaflow.bench")

S3 = "archiver on S3"
TOOLS = ("bare consumer", "archiver", S3, "stream worker")
TARGETS = {"archiver": 0.95, "stream worker": 0.9}
"""Each consumer's rate against the bare consumer's; every one of them checks CRCs with the C crc32c."""
S3_TARGET = 0.8
"""The archiver on the S3 server against the archiver on a local directory: a batch commits a few
large files and one log entry, so the store's round trips may cost at most a fifth."""
SLUGS = {S3: "archiver-s3"}
SEED = 1
PROFILE_EVENTS = 100_000
POLL = "Kafka poll (kafka-python: fetch, CRC check, decoding)"
PROFILE_FOCUS = {
    "archiver": {
        POLL: "group.poll",
        "records to a frame": "contract.records_frame",
        "contract (DuckDB)": "contract.classify",
        "publishing (Parquet, fsync, manifest)": "archiver._publish",
    },
    "stream worker": {
        POLL: "group.poll",
        "records to a frame": "contract.records_frame",
        "contract (DuckDB)": "contract.classify",
        "state transaction (dedupe, aggregates, offsets)": "state.apply",
        "snapshot publishing": "paths.publish_snapshot",
    },
}


def produce_once(bootstrap: str, topic: str, count: int) -> dict:
    """Send ``count`` events as fast as kafka-python allows: values drawn in bulk, partition precomputed."""
    started = time.monotonic()
    batch = kafka_messages(count, SEED, datetime.now(UTC), timedelta(hours=23), partitions=3)
    drawn = time.monotonic()
    producer = clients.producer(bootstrap)
    send = producer.send
    try:
        for key, value, partition in zip(batch.keys, batch.values, batch.partitions, strict=False):
            send(topic, key=key, value=value, partition=partition)
        producer.flush()
    finally:
        producer.close()
    sent = time.monotonic()
    return {
        "messages": count,
        "draw_seconds": round(drawn - started, 2),
        "send_seconds": round(sent - drawn, 2),
        "messages_per_second": round(count / (sent - drawn)),
        "value_bytes_per_message": round(batch.value_bytes / max(count, 1), 1),
    }


def _command(tool: str) -> list[str]:
    if tool in ("archiver", S3):
        return lambdaflow_command("archive", "--until-idle")
    if tool == "stream worker":
        return lambdaflow_command("stream", "--until-idle")
    return bench_command("bare-consume", "--group", f"bench-bare-{uuid.uuid4().hex[:8]}")


def _env(ctx: Context, bootstrap: str, topic: str, data_dir: Path) -> dict[str, str]:
    return {**ctx.env, "KAFKA_BOOTSTRAP": bootstrap, "LAMBDAFLOW_TOPIC": topic, "LAMBDAFLOW_DATA_DIR": str(data_dir)}


def _slug(tool: str) -> str:
    return SLUGS.get(tool, tool.split()[0])


def _consume(
    ctx: Context, tool: str, bootstrap: str, topic: str, data_dir: Path, name: str, storage: dict[str, str]
) -> dict:
    if tool != "bare consumer":  # the bare consumer joins a fresh group each time; the workers their own
        settle()
    env = {**_env(ctx, bootstrap, topic, data_dir), **storage}
    finished: Finished = run(name, _command(tool), env, ctx.folder("ingest", "logs"), timeout=1800)
    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    first = summary["first_message_after"]
    if first is None:
        raise RuntimeError(f"ingest: {tool} read no message from {topic}")
    consuming = max(summary["seconds"] - first, 1e-3)
    return {
        "wall_seconds": round(finished.wall_seconds, 3),
        "own_seconds": summary["seconds"],
        "startup_seconds": first,
        "consuming_seconds": round(consuming, 3),
        "messages": summary["messages"],
        "messages_per_second": round(summary["messages"] / consuming),
        "messages_per_wall_second": round(summary["messages"] / finished.wall_seconds),
        "peak_rss_mb": round(finished.peak_rss_mb, 1),
        "crc32c": summary.get("crc32c"),  # the bare consumer reports it; the workers' is asked apart
    }


def _repetition(ctx: Context, rep: int, bootstrap: str, topic: str, s3: LocalS3Server) -> dict[str, dict]:
    results = {}
    for tool in alternate(TOOLS, rep):
        slug = _slug(tool)
        data_dir = ctx.work / "ingest" / f"{slug}-{rep}"
        storage = {}
        if tool == S3:  # a bucket of its own each time, as the local archiver gets a fresh directory
            storage = {"LAMBDAFLOW_STORAGE_URL": f"{s3.bucket(f'bench-ingest-{rep}')}/lambdaflow", **s3.env()}
        full = _consume(ctx, tool, bootstrap, topic, data_dir, f"{slug}-{rep}", storage)
        full["data_dir"] = str(data_dir)
        results[tool] = full
        log.info(
            "ingest rep %d %s: %d msg/s while consuming (%.1f s after %.1f s to the first records), peak RSS %.0f MB",
            rep + 1,
            tool,
            full["messages_per_second"],
            full["consuming_seconds"],
            full["startup_seconds"],
            full["peak_rss_mb"],
        )
    return results


def _footprint(last: dict[str, dict]) -> dict:
    """Sizes on disk after the last repetition, for section 6."""
    archive_dir = Path(last["archiver"]["data_dir"])
    speed_dir = Path(last["stream worker"]["data_dir"]) / "speed"
    state = sum(p.stat().st_size for p in speed_dir.rglob("*.duckdb*") if p.is_file())
    snapshots = sum(p.stat().st_size for p in speed_dir.rglob("snapshots/*.parquet"))
    raw = sum(p.stat().st_size for p in (archive_dir / "tables" / "raw").rglob("*.parquet"))
    files = len(list((archive_dir / "tables" / "raw").rglob("*.parquet")))
    return {
        "state_bytes": state,
        "snapshot_bytes": snapshots,
        "raw_bytes": raw,
        "raw_files": files,
        "events": last["stream worker"]["messages"],
    }


def run_section(ctx: Context) -> Section:
    logs = ctx.folder("ingest", "logs")
    s3 = LocalS3Server(logs / "moto.log").start()
    try:
        with EmbeddedBroker(log_path=logs / "tansu.log") as broker:
            return _measure(ctx, broker.bootstrap, s3)
    finally:
        s3.stop()


def _measure(ctx: Context, bootstrap: str, s3: LocalS3Server) -> Section:
    sizes = ctx.sizes
    reps: list[dict[str, dict]] = []
    topic = "bench-ingest"
    clients.ensure_topic(bootstrap, topic, 3)
    log.info("ingest: producing %d events (lz4, 3 partitions)", sizes.ingest_events)
    produced = produce_once(bootstrap, topic, sizes.ingest_events)
    log.info("ingest: produced at %d msg/s", produced["messages_per_second"])
    for rep in range(sizes.repetitions):
        reps.append(_repetition(ctx, rep, bootstrap, topic, s3))
        if rep < sizes.repetitions - 1:
            for result in reps[-1].values():
                shutil.rmtree(result["data_dir"], ignore_errors=True)
    for tool, results in ((t, [r[t] for r in reps]) for t in TOOLS):
        wrong = [r["messages"] for r in results if r["messages"] != sizes.ingest_events]
        if wrong:
            raise RuntimeError(f"ingest: {tool} read {wrong} messages, not {sizes.ingest_events}")
    missed = [tool for tool in PROFILE_FOCUS if _share(reps, tool) < TARGETS[tool]]
    profiles = _profiles(ctx, bootstrap, topic, missed)
    crc = _crc_in_workers(ctx, bootstrap, topic)
    return _summarize(ctx, reps, produced, profiles, crc)


def _crc_in_workers(ctx: Context, bootstrap: str, topic: str) -> str:
    """Which CRC32C kafka-python uses in the interpreter and environment the workers run with."""
    env = _env(ctx, bootstrap, topic, ctx.work / "ingest" / "crc")
    return run("crc-check", bench_command("crc-check"), env, ctx.folder("ingest", "logs"), timeout=120).json()["crc32c"]


def _share(reps: list[dict[str, dict]], tool: str, peer: str = "bare consumer") -> float:
    """The median over repetitions of the tool's rate against the peer's in the same repetition."""
    return median(r[tool]["messages_per_second"] / r[peer]["messages_per_second"] for r in reps)


def _profiles(ctx: Context, bootstrap: str, topic: str, tools: list[str]) -> dict[str, dict]:
    """Each tool that missed its target, run once more under cProfile, on a smaller topic in full mode."""
    if not tools:
        return {}
    if ctx.sizes.ingest_events > PROFILE_EVENTS:
        topic = "bench-profile"
        clients.ensure_topic(bootstrap, topic, 3)
        produce_once(bootstrap, topic, PROFILE_EVENTS)
    found = {}
    for tool in tools:
        slug = _slug(tool)
        stats = ctx.work / "ingest" / f"{slug}.prof"
        log.info("ingest: %s missed its target; profiling it", tool)
        run(
            f"{slug}-profiled",
            profiling.profiled(_command(tool), stats),
            _env(ctx, bootstrap, topic, ctx.work / "ingest" / f"{slug}-profiled"),
            ctx.folder("ingest", "logs"),
            timeout=1800,
        )
        found[tool] = profiling.summarize(stats, PROFILE_FOCUS[tool], waits_in=POLL)
    return found


def _summarize(
    ctx: Context, reps: list[dict[str, dict]], produced: dict, profiles: dict[str, dict], crc: str
) -> Section:
    medians = {
        tool: {
            key: median(r[tool][key] for r in reps)
            for key in (
                "messages_per_second",
                "peak_rss_mb",
                "startup_seconds",
                "consuming_seconds",
                "wall_seconds",
                "own_seconds",
            )
        }
        for tool in TOOLS
    }
    bare = medians["bare consumer"]
    ceiling_crc = sorted({r["bare consumer"]["crc32c"] for r in reps})
    c_everywhere = crc == "C" and ceiling_crc == ["C"]
    rows = []
    for tool in ("archiver", "stream worker"):
        share = _share(reps, tool)
        target = TARGETS[tool]
        short = too_short(r[t]["consuming_seconds"] for r in reps for t in ("bare consumer", tool))
        met = share >= target and c_everywhere and not short
        why = ""
        if short:
            why = TOO_SHORT
        elif not c_everywhere:
            why = (
                f"kafka-python checked CRCs in {crc} in the workers and in {'/'.join(ceiling_crc)} in the bare "
                "consumer: the comparison needs the C crc32c on both sides"
            )
        elif not met:
            why = _why_slow(tool, share, target, profiles.get(tool))
        rows.append(
            Row(
                id=f"ingest.{tool.split()[0]}",
                what=f"ingest: {tool} msgs/s while consuming",
                figure=round(medians[tool]["messages_per_second"]),
                unit="msg/s",
                peer="bare kafka-python consumer (ceiling)",
                peer_figure=round(bare["messages_per_second"]),
                ratio=round(share, 3),
                target=f"ratio >= {target}, C crc32c on both sides",
                met=met,
                why=why,
                detail={
                    "crc32c_workers": crc,
                    "crc32c_ceiling": "/".join(ceiling_crc),
                    "peak_rss_mb": medians[tool]["peak_rss_mb"],
                    "ceiling_peak_rss_mb": bare["peak_rss_mb"],
                    "startup_seconds": medians[tool]["startup_seconds"],
                    "ceiling_startup_seconds": bare["startup_seconds"],
                },
            )
        )
    rows.append(_s3_row(reps, medians))
    details = {
        "produced": produced,
        "medians": medians,
        "repetitions": reps,
        "footprint": _footprint(reps[-1]),
        "profiles": profiles,
        "crc32c": {"workers": crc, "ceiling": ceiling_crc},
    }
    return Section(
        1,
        "Ingest ceiling",
        rows,
        _text(ctx, medians, produced, reps, profiles, crc),
        details,
        plots=[
            lambda out: plots.bars(
                out / "ingest_throughput.png",
                "Ingest: messages/s while consuming (median, dots: repetitions)",
                list(TOOLS),
                [medians[t]["messages_per_second"] for t in TOOLS],
                [[r[t]["messages_per_second"] for r in reps] for t in TOOLS],
                "messages/s",
                reference=(TARGETS["stream worker"] * bare["messages_per_second"], "90% of the bare consumer"),
            ),
            lambda out: plots.bars(
                out / "ingest_peak_rss.png",
                "Ingest: peak RSS per process (median)",
                list(TOOLS),
                [medians[t]["peak_rss_mb"] for t in TOOLS],
                [[r[t]["peak_rss_mb"] for r in reps] for t in TOOLS],
                "MB",
            ),
        ],
    )


def _s3_row(reps: list[dict[str, dict]], medians: dict) -> Row:
    """The archiver into a bucket of the local S3 server against the archiver into a local directory."""
    share = _share(reps, S3, peer="archiver")
    short = too_short(r[t]["consuming_seconds"] for r in reps for t in ("archiver", S3))
    met = share >= S3_TARGET and not short
    why = TOO_SHORT if short else ""
    if not met and not short:
        why = (
            f"{share:.0%} of the archiver on a local directory: each batch's commit writes its Parquet files "
            "and a log entry to the store over HTTP, and the S3 server (a Python process) shares the two cores"
        )
    return Row(
        id="ingest.archiver_s3",
        what=f"ingest: {S3} msgs/s while consuming",
        figure=round(medians[S3]["messages_per_second"]),
        unit="msg/s",
        peer="archiver on a local directory",
        peer_figure=round(medians["archiver"]["messages_per_second"]),
        ratio=round(share, 3),
        target=f"ratio >= {S3_TARGET}",
        met=met,
        why=why,
        detail={
            "peak_rss_mb": medians[S3]["peak_rss_mb"],
            "local_peak_rss_mb": medians["archiver"]["peak_rss_mb"],
            "startup_seconds": medians[S3]["startup_seconds"],
            "wall_seconds": medians[S3]["wall_seconds"],
            "local_wall_seconds": medians["archiver"]["wall_seconds"],
        },
    )


def _why_slow(tool: str, share: float, target: float, profile: dict | None) -> str:
    work = (
        "classifies each batch with the contract in DuckDB, buffers Polars frames and writes zstd Parquet"
        if tool == "archiver"
        else "classifies each micro-batch, dedupes against its DuckDB state and commits state, offsets and a "
        "snapshot per partition in each transaction"
    )
    where = f" (cProfile: {profiling.describe(profile)})" if profile else ""
    return (
        f"{share:.0%} of the ceiling, {target - share:.0%} short of {target:.0%}: on top of polling, the {tool} {work} "
        f"on a second thread{where}; on two cores that work competes for CPU with kafka-python's decoding, which "
        "alone keeps one core busy, and with the broker"
    )


def _text(ctx: Context, medians: dict, produced: dict, reps: list, profiles: dict[str, dict], crc: str) -> str:
    lines = [
        f"{ctx.sizes.ingest_events:,} events (mean value {produced['value_bytes_per_message']} bytes) were "
        f"produced once, lz4, to 3 partitions, at {produced['messages_per_second']:,} msg/s by one kafka-python "
        f"producer (values drawn in bulk by DuckDB in {produced['draw_seconds']} s first). Then, in "
        f"{len(reps)} repetitions, in rotating order, each consumer read all of it in a fresh process.",
        "",
        "*msgs/s while consuming* = messages / (the run's own seconds − its seconds to the first records). "
        "*Own seconds* is what each prints in its summary: from creating its consumer (after the imports) to "
        "the end; *first records* is when its first poll brought any (its `first_message_after`), after the "
        "group join (the embedded broker holds a JoinGroup for half the 6 s session timeout) and the first "
        "fetch. What follows them is counting, noticing it has caught up and closing, alike on every side. "
        "Peak RSS is the process's own (`wait4` in a small launcher, so the benchmark's own memory is not "
        "counted).",
        "",
        "| consumer | msgs/s while consuming | counting s | own s | to first records s | wall s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tool in TOOLS:
        m = medians[tool]
        lines.append(
            f"| {tool} | {m['messages_per_second']:,.0f} | {m['consuming_seconds']:.1f} | {m['own_seconds']:.1f} | "
            f"{m['startup_seconds']:.1f} | {m['wall_seconds']:.1f} | "
            f"{m['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Medians over the repetitions; the ratio in the summary is the median of the per-repetition "
        "ratios (each consumer against the bare consumer of the same repetition). Targets: the archiver at "
        f"least {TARGETS['archiver']:.0%} of the bare consumer, the stream worker {TARGETS['stream worker']:.0%}; "
        f"the {S3} (a bucket of the local S3 server) at least {S3_TARGET:.0%} of the archiver on a local directory.",
        "",
        f"CRC32C: kafka-python checked every record batch's CRC in {crc} in the workers' interpreter (a child "
        "with their environment asked it) and in "
        f"{'/'.join(sorted({r['bare consumer']['crc32c'] for r in reps}))} in the bare consumer (it says so "
        "in its summary); kafka-python falls back to a pure-Python CRC, several times slower, when the crc32c "
        "package is missing, and a row only counts with the C one on both sides.",
    ]
    events = min(ctx.sizes.ingest_events, PROFILE_EVENTS)
    if profiles:
        lines += [
            "",
            "The bare consumer pays the same Kafka poll; everything else in a profile below is what that "
            "consumer adds on top of the ceiling, on its counting thread.",
        ]
    for tool, profile in profiles.items():
        lines += [""] + profiling.markdown(
            profile, f"The {tool} missed its target, so it read {events:,} events once more under cProfile"
        )
    return "\n".join(lines)
