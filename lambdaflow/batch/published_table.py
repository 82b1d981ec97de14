"""The batch layer's published hours: one Delta table on the storage, ``batch/published_hours``.

Each built day is replaced in it by one commit (an overwrite of the rows of
that ``event_date``), so a reader of the table, lambdaflow's or any engine's,
sees the day as it was or as rebuilt, never in between. The table is not
partitioned: ``event_date`` stays a column of every file, which the serving
model reads by file, and a day's rows are a few thousand at most. Each commit
writes the day's rows as one file; the batch manifest names it, and a replaced
file stays until `lambdaflow maintain` vacuums it after the kept period, long
after the last query that read it.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError

from lambdaflow.core.files import fsync_delta_commits
from lambdaflow.core.storage import Storage

NAME = "published_hours"


class PublishedHours:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.uri = storage.table_uri("batch", NAME)

    def open(self) -> DeltaTable | None:
        """The table at its latest version; None before the first day is published."""
        try:
            return DeltaTable(self.uri, storage_options=self.storage.delta_options())
        except TableNotFoundError:
            return None

    def replace_day(self, day: date, exported: Path) -> list[str]:
        """Replace ``day``'s rows by those of the Parquet file ``exported`` (the day's built hours, each
        row of that event date) in one commit; returns the URIs of the day's files now."""
        rows = pq.read_table(exported)
        local = not self.storage.is_s3
        table = self.open() if local else None  # its version bounds what the fsyncs cover
        before = table.version() if table is not None else None
        write_deltalake(
            self.uri,
            rows,
            mode="overwrite",  # creates the table when there is none
            predicate=f"event_date = '{day.isoformat()}'",
            schema_mode="merge",  # a metric added since the first day is a new column
            writer_properties=WriterProperties(compression="ZSTD"),
            storage_options=self.storage.delta_options(),
        )
        if local:
            fsync_delta_commits(Path(self.uri), before)
        return self.day_files(day)

    def day_files(self, day: date) -> list[str]:
        """The URIs of the files that hold ``day``'s rows at the table's latest version."""
        table = self.open()
        if table is None:
            return []
        actions = pl.from_arrow(pa.table(table.get_add_actions(flatten=True)))
        assert isinstance(actions, pl.DataFrame)
        base = unquote(table.table_uri.removeprefix("file://")).rstrip("/")  # Delta gives it percent-encoded
        held = actions.filter((pl.col("min.event_date") <= day) & (pl.col("max.event_date") >= day))
        return [f"{base}/{path}" for path in held["path"]]
