"""4b. Queries on the S3 server: the query section's published days and snapshots, copied to a bucket
of a local S3 server (moto's), answered from there.

The same 7-day question is asked, idle, in blocks that alternate between three readers: the serving
answer over the local directory, the serving answer over the bucket, and the bare DuckDB query
over the bucket's files (the fsspec filesystem registered once, the file lists taken untimed). An
answer on the bucket reads the manifest, the live generation and the snapshots' listing, fetches
each snapshot whole and reads the batch files by ranges; the bare query only reads the files.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path

import duckdb

from bench.bare_query import SETTINGS, statement
from bench.core import Context, Row, percentile
from lambdaflow.core.config import Settings
from lambdaflow.core.documents import Documents
from lambdaflow.core.layout import BATCH_MANIFEST
from lambdaflow.core.speed_files import SpeedFiles
from lambdaflow.core.storage import Storage
from lambdaflow.ops.object_store import LocalS3Server
from lambdaflow.serving.query import Question, answer

log = logging.getLogger("lambdaflow.bench")

TARGET_RATIO = 2.0
"""As on a directory: the answer's p99 within 2x of the bare query's over the same files."""
GENERATION = "bench"
TEXT = (
    "\n\nOn the S3 server (`queries.s3`): the same published days and snapshots, copied to a bucket of a "
    "local S3 server (moto, a Python process on the same two cores), answered idle in blocks that alternate "
    "with the answer over the local directory and a bare DuckDB query over the bucket's files (the fsspec "
    "filesystem registered once, the file lists taken untimed)."
)
READERS = ("local answer", "S3 answer", "S3 bare query")


def s3_rows(ctx: Context, settings: Settings, question: Question) -> list[Row]:
    server = LocalS3Server(ctx.folder("queries-s3", "logs") / "s3.log").start()
    try:
        bucket = server.bucket(f"queries-{uuid.uuid4().hex[:12]}")
        env = {"LAMBDAFLOW_STORAGE_URL": f"{bucket}/lambdaflow", **server.env()}
        storage = Storage.from_env(env, settings.data_dir)
        on_s3 = replace(settings, data_dir=ctx.folder("queries-s3", "data"), storage=storage)
        _copy(settings, on_s3)
        samples = _alternate(ctx, settings, on_s3, question)
    finally:
        server.stop()
    return _rows(samples)


def _copy(local: Settings, on_s3: Settings) -> None:
    """The published table, a manifest naming its files on the bucket, and the snapshots as the live
    generation."""
    storage = on_s3.storage
    filesystem = storage.filesystem()
    table = local.storage.table_uri("batch", "published_hours")
    filesystem.put(table, storage.table_uri("batch", "published_hours"), recursive=True)
    manifest = Documents(local.data_dir, local.storage).read(BATCH_MANIFEST) or {}
    for entry in manifest.get("days", {}).values():
        names = entry["files"] if "files" in entry else [entry["file"]]
        entry["files"] = [storage.table_uri("batch", "published_hours", Path(name).name) for name in names]
        entry.pop("file", None)
    on_s3.documents.write(BATCH_MANIFEST, manifest)
    speed = SpeedFiles(on_s3.data_dir, on_s3.topic, storage)
    for path in local.speed_files.snapshots():
        partition = int(Path(path).stem.removeprefix("partition-"))
        filesystem.put(path, speed.snapshot_uri(GENERATION, partition))
    speed.adopt_generation(GENERATION)


def _alternate(ctx: Context, local: Settings, on_s3: Settings, question: Question) -> dict[str, list[float]]:
    bare = duckdb.connect()
    bare.execute(SETTINGS).fetchall()
    bare.register_filesystem(on_s3.storage.filesystem())
    from bench.queries import published_files  # that module runs this one's rows

    bare_sql, bare_values = statement(published_files(on_s3, question))
    readers = {
        "local answer": lambda: answer(local, question),
        "S3 answer": lambda: answer(on_s3, question),
        "S3 bare query": lambda: bare.execute(bare_sql, bare_values).fetchall(),
    }
    if _totals(answer(local, question)) != _totals(answer(on_s3, question)):
        raise AssertionError("the answers on the directory and on the S3 server differ")
    samples: dict[str, list[float]] = {name: [] for name in READERS}
    try:
        for _ in range(3):
            for ask in readers.values():
                ask()
        for rep in range(ctx.sizes.repetitions):
            for name, ask in readers.items():
                for _ in range(ctx.sizes.queries_per_block):
                    started = time.perf_counter()
                    ask()
                    samples[name].append(time.perf_counter() - started)
            log.info(
                "queries on S3 rep %d: %s",
                rep + 1,
                ", ".join(f"{name} p99 {percentile(samples[name], 0.99) * 1000:.1f} ms" for name in READERS),
            )
    finally:
        bare.close()
    return samples


def _totals(rows: list[dict]) -> list[tuple]:
    return [tuple(value for key, value in row.items() if key != "source") for row in rows]


def _rows(samples: dict[str, list[float]]) -> list[Row]:
    p99 = {name: percentile(values, 0.99) * 1000 for name, values in samples.items()}
    p50 = {name: percentile(values, 0.5) * 1000 for name, values in samples.items()}
    ratio = p99["S3 answer"] / p99["S3 bare query"]
    met = ratio <= TARGET_RATIO
    why = (
        ""
        if met
        else (
            f"an answer on the bucket makes requests the bare query does not (the manifest, the live generation, "
            f"the snapshots' listing, a whole GET of each snapshot): p50 {p50['S3 answer']:.1f} ms against "
            f"{p50['S3 bare query']:.1f} ms"
        )
    )
    detail = {f"{name.replace(' ', '_')}_p50_ms": round(p50[name], 2) for name in READERS}
    return [
        Row(
            id="queries.s3",
            what="queries: 7-day serving answer in process on the S3 server, p99, idle",
            figure=round(p99["S3 answer"], 2),
            unit="ms",
            peer="a bare DuckDB query over the same files on the S3 server, p99",
            peer_figure=round(p99["S3 bare query"], 2),
            ratio=round(ratio, 3),
            target=f"ratio <= {TARGET_RATIO:g}",
            met=met,
            why=why,
            detail={
                **detail,
                "local_answer_p99_ms": round(p99["local answer"], 2),
                "answers": len(samples["S3 answer"]),
            },
        )
    ]
