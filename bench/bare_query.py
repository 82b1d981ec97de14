"""The bare DuckDB query the serving answers are measured against: the same files, summed per day by
one hand-written statement, batch hours before the boundary and the snapshots' hours from it on.

Kept free of lambdaflow's imports, so that the bare process (``python -m bench.child bare-query``)
pays only for the interpreter and DuckDB.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime
from pathlib import Path

SETTINGS = """
set TimeZone = 'UTC';
set enable_external_file_cache = false;
set parquet_metadata_cache = false;
"""
"""The serving layer's settings (lambdaflow.serving.query): a snapshot is replaced under the same name,
and a cache keyed by path and modification time could answer with the file it replaced."""


@dataclass(frozen=True)
class Files:
    """What the bare query reads: the published files of the range, the boundary, the metric columns."""

    batch_files: list[str]
    speed_snapshots: list[str]
    boundary: str | None
    metrics: list[str]
    date_from: str
    date_to: str

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Files:
        return cls(**json.loads(path.read_text()))


@contextmanager
def pinned(files: Files) -> Iterator[Files]:
    """The same files, each opened once and read through its descriptor, as the serving layer reads them:
    DuckDB opens a Parquet file more than once per query, and a snapshot replaced in between would pair
    one file's footer with another's bytes (DuckDB: "TProtocolException: Invalid data")."""
    with ExitStack() as stack:

        def pin(path: str) -> str:
            descriptor = os.open(path, os.O_RDONLY)
            stack.callback(os.close, descriptor)
            return f"/dev/fd/{descriptor}"

        yield replace(
            files,
            batch_files=[pin(p) for p in files.batch_files],
            speed_snapshots=[pin(p) for p in files.speed_snapshots],
        )


def statement(files: Files) -> tuple[str, dict[str, object]]:
    """The SQL and its parameters; a part with no file (or no boundary for the batch) is left out."""
    columns = ", ".join(files.metrics)
    hour_start = "cast(event_date as timestamp) + to_hours(hour)"
    parts: list[str] = []
    values: dict[str, object] = {
        "date_from": date.fromisoformat(files.date_from),
        "date_to": date.fromisoformat(files.date_to),
    }
    boundary = datetime.fromisoformat(files.boundary) if files.boundary else None
    if files.batch_files and boundary is not None:
        parts.append(
            f"select event_date, {columns} from read_parquet($batch, union_by_name = true) "
            f"where event_date between $date_from and $date_to and {hour_start} < $boundary"
        )
        values["batch"] = files.batch_files
    if files.speed_snapshots:
        served = f" and {hour_start} >= $boundary" if boundary is not None else ""
        parts.append(
            f"select event_date, {columns} from read_parquet($speed, union_by_name = true) "
            f"where event_date between $date_from and $date_to{served}"
        )
        values["speed"] = files.speed_snapshots
    if boundary is not None and ("batch" in values or "speed" in values):
        values["boundary"] = boundary
    if not parts:
        raise ValueError("no published file to read")
    sums = ", ".join(f"sum({name}) as {name}" for name in files.metrics)
    union = " union all ".join(f"({part})" for part in parts)
    return f"select event_date, {sums} from ({union}) group by event_date order by event_date", values
