"""How commands write: results to stdout, progress and logs to stderr."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

FORMATS = ("json", "table")
_AMOUNT = re.compile(r"-?[0-9][0-9,]*(\.[0-9]+)?")


def emit(rows: Iterable[Mapping[str, object]], fmt: str = "json") -> None:
    """Write result rows: JSON lines, or one table with a column per key."""
    rows = list(rows)
    if fmt == "json":
        for row in rows:
            sys.stdout.write(json.dumps(row, default=str) + "\n")
        sys.stdout.flush()
        return
    emit_table(rows)


def emit_table(
    rows: Sequence[Mapping[str, object]], caption: str | None = None, lines_after: set[int] | None = None
) -> None:
    """One table with a column per key (numbers, and text that reads as a number, to the right), a
    line under each row whose index is in ``lines_after``, and ``caption`` beneath."""
    table = Table(caption=caption, caption_justify="left")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="right" if _numeric(rows, column) else "left")
    for index, row in enumerate(rows):
        cells = ("" if row.get(c) is None else str(row.get(c)) for c in columns)
        table.add_row(*cells, end_section=index in (lines_after or ()))
    _stdout_console().print(table)


def _stdout_console() -> Console:
    console = Console(file=sys.stdout, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160  # piped: no terminal to fit, so do not cut columns short
    return console


def emit_record(record: Mapping[str, object], fmt: str = "json") -> None:
    """Write one result: a JSON line, or a two-column table of its fields."""
    if fmt == "json":
        emit([record], fmt)
        return
    table = Table(show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in record.items():
        if isinstance(value, Mapping):
            for inner_key, inner_value in value.items():
                table.add_row(f"{key} {inner_key}", str(inner_value))
        else:
            table.add_row(key, "" if value is None else str(value))
    _stdout_console().print(table)


def _numeric(rows: Sequence[Mapping[str, object]], column: str) -> bool:
    values = [row.get(column) for row in rows if row.get(column) not in (None, "")]
    return bool(values) and all(
        (isinstance(v, (int, float)) and not isinstance(v, bool)) or (isinstance(v, str) and _AMOUNT.fullmatch(v))
        for v in values
    )


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    # kafka-python narrates every connection at INFO.
    logging.getLogger("kafka").setLevel(logging.INFO if verbose else logging.WARNING)
    # Its IO thread warns whenever a busy producer loop holds the GIL for 100 ms.
    logging.getLogger("kafka.net.selector").setLevel(logging.INFO if verbose else logging.ERROR)


class ProgressBar:
    """A bar on stderr when it is a terminal; a log line every few seconds when it is not."""

    def __init__(self, description: str, log_every: float = 5.0) -> None:
        self._description = description
        self._console = Console(file=sys.stderr)
        self._log_every = log_every
        self._last_log = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        if self._console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self._description, total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, total=total)
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every or done == total:
            self._last_log = now
            logging.getLogger("lambdaflow").info("%s: %d/%d", self._description, done, total)

    def __exit__(self, *exc_info: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc_info)
