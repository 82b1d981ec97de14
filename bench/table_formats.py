"""Delta (deltalake) against Iceberg (pyiceberg) for the raw store, on a directory and on a local S3 server.

``python -m bench.table_formats`` appends APPENDS batches of ROWS raw-store rows
to each format, each append carrying the partition's next offset as the
format's marker (Delta: an application transaction; Iceberg: a snapshot
property), then opens each table, lists its files and counts its rows with
DuckDB. It also checks that two writers holding the same snapshot cannot both
commit the same partition. pyiceberg is not among lambdaflow's dependencies
(docs/storage.md says why it was not chosen): install
``pyiceberg[pyarrow,sql-sqlite,s3fs]`` in a scratch environment to run this.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from lambdaflow.core.storage import Storage
from lambdaflow.ops.object_store import LocalS3Server

ROWS, APPENDS = 20_000, 20


def _batch(i: int) -> Any:
    return pl.DataFrame(
        {
            "event_id": [f"e-{i}-{j}" for j in range(ROWS)],
            "user_id": [f"u{j % 5000}" for j in range(ROWS)],
            "kafka_partition": [0] * ROWS,
            "kafka_offset": list(range(i * ROWS, (i + 1) * ROWS)),
        }
    ).to_arrow()


def _count(storage: Storage, files: list[str]) -> int:
    con = duckdb.connect()
    if storage.filesystem() is not None:
        con.register_filesystem(storage.filesystem())
    return con.execute("select count(*) from read_parquet($f)", {"f": files}).fetchall()[0][0]


def _figures(appends: list[float], opened: float, read: float, rows: int) -> dict:
    return {
        "append_median_ms": round(statistics.median(appends) * 1e3, 1),
        "append_max_ms": round(max(appends) * 1e3, 1),
        "open_and_list_ms": round(opened * 1e3, 1),
        "duckdb_count_ms": round(read * 1e3, 1),
        "rows": rows,
    }


def delta(storage: Storage) -> dict:
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
    from deltalake.exceptions import CommitFailedError

    uri, options = storage.table_uri("delta"), storage.delta_options()
    appends = []
    for i in range(APPENDS):
        started = time.perf_counter()
        marker = CommitProperties(app_transactions=[Transaction("p0", (i + 1) * ROWS)])
        write_deltalake(uri, _batch(i), mode="append", storage_options=options, commit_properties=marker)
        appends.append(time.perf_counter() - started)
    started = time.perf_counter()
    table = DeltaTable(uri, storage_options=options)
    files, marker_read = table.file_uris(), table.transaction_version("p0")
    opened = time.perf_counter() - started
    started = time.perf_counter()
    rows = _count(storage, files)
    figures = _figures(appends, opened, time.perf_counter() - started, rows)
    first, second = DeltaTable(uri, storage_options=options), DeltaTable(uri, storage_options=options)
    write_deltalake(
        first, _batch(0), mode="append", commit_properties=CommitProperties(app_transactions=[Transaction("p0", 1)])
    )
    try:
        write_deltalake(
            second,
            _batch(0),
            mode="append",
            commit_properties=CommitProperties(app_transactions=[Transaction("p0", 1)]),
        )
        figures["second_writer"] = "committed"
    except CommitFailedError:
        figures["second_writer"] = "refused"
    figures["marker_read_back"] = marker_read == APPENDS * ROWS
    return figures


def iceberg(storage: Storage, work: Path) -> dict:
    from pyiceberg.catalog.sql import SqlCatalog

    properties: dict[str, str] = {}
    if storage.is_s3:
        properties = {
            "s3.endpoint": storage.aws["AWS_ENDPOINT_URL"],
            "s3.access-key-id": storage.aws["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": storage.aws["AWS_SECRET_ACCESS_KEY"],
            "s3.region": storage.aws.get("AWS_REGION", "us-east-1"),
        }
    warehouse = storage.table_uri("iceberg") if storage.is_s3 else f"file://{storage.table_uri('iceberg')}"
    catalog = SqlCatalog(
        "bench", uri=f"sqlite:///{work}/catalog-{uuid.uuid4().hex}.db", warehouse=warehouse, **properties
    )
    catalog.create_namespace("raw")
    catalog.create_table("raw.events", schema=_batch(0).schema)
    appends = []
    for i in range(APPENDS):
        started = time.perf_counter()
        catalog.load_table("raw.events").append(_batch(i), snapshot_properties={"p0": str((i + 1) * ROWS)})
        appends.append(time.perf_counter() - started)
    started = time.perf_counter()
    table = catalog.load_table("raw.events")
    files = [task.file.file_path for task in table.scan().plan_files()]
    snapshot = table.current_snapshot()
    opened = time.perf_counter() - started
    started = time.perf_counter()
    rows = _count(storage, files)
    figures = _figures(appends, opened, time.perf_counter() - started, rows)
    figures["marker_read_back"] = snapshot is not None and snapshot.summary["p0"] == str(APPENDS * ROWS)
    return figures


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="table-formats-"))
    server = LocalS3Server(work / "s3.log").start()
    try:
        local = Storage.from_env({}, work)
        bucket = server.bucket("formats")
        s3 = Storage.from_env({"LAMBDAFLOW_STORAGE_URL": bucket, **server.env()}, work)
        results = {
            "delta, local directory": delta(local),
            "delta, S3 server": delta(s3),
            "iceberg, local directory": iceberg(local, work),
            "iceberg, S3 server": iceberg(s3, work),
        }
    finally:
        server.stop()
    json.dump(results, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
