"""Crash-safe file moves: a reader sees a whole file or none of it."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from lambdaflow.core.errors import InputError, first_line

if TYPE_CHECKING:  # only the frame's own method is called: readers of small files need not import Polars
    import polars as pl


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdir_durably(path: Path) -> None:
    """Create the folder ``path`` and its missing parents, each new one's entry fsynced into its parent:
    a file published into a new folder, and a manifest naming it, then survive a crash together."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def temp_path_for(final: Path, temp_dir: Path) -> Path:
    """A unique temporary name in ``temp_dir``, which sits on the same file system as ``final``."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    return temp_dir / f"{final.name}.{uuid.uuid4().hex[:12]}.tmp"


def remove_stale_temps(final: Path, temp_dir: Path | None = None) -> None:
    """Remove the temporary files a killed writer of ``final`` left behind. Call it only while no
    other process may write ``final`` (its new owner, holding the partition)."""
    for temp in (temp_dir or final.parent).glob(f"{final.name}.*.tmp"):
        temp.unlink(missing_ok=True)


def write_parquet_durably(frame: pl.DataFrame, path: Path) -> None:
    frame.write_parquet(path, compression="zstd", statistics=True)
    fsync_file(path)


def publish_new(temp: Path, final: Path) -> None:
    """Give a finished temporary file its final name, which must not exist yet.

    A hard link fails atomically when the name is taken, so a published file is
    never replaced, not even by a racing writer.
    """
    mkdir_durably(final.parent)
    os.link(temp, final)  # FileExistsError when the name is taken
    os.unlink(temp)
    fsync_dir(final.parent)


def publish_replacing(temp: Path, final: Path) -> None:
    """Give a finished, fsynced temporary file its final name, replacing any file of that name, and
    make the name durable before anything that refers to it is written."""
    mkdir_durably(final.parent)
    os.replace(temp, final)
    fsync_dir(final.parent)


def replace_json(path: Path, document: Any, temp_dir: Path | None = None, durable: bool = True) -> None:
    """Atomically replace a small JSON file (write, fsync, rename, fsync the directory).

    ``durable=False`` skips both fsyncs, for a file that only reports progress and is written again
    within seconds: a killed process still leaves the old file or the new one, whole; only a machine
    that loses power may leave it empty, and its worker then writes it again."""
    mkdir_durably(path.parent)
    temp = temp_path_for(path, temp_dir or path.parent)
    with temp.open("w") as handle:
        json.dump(document, handle, indent=1, sort_keys=True, default=str)
        handle.write("\n")
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temp, path)
    if durable:
        fsync_dir(path.parent)


PROGRESS_ONLY = "it only reports progress: delete it, and the partition's worker writes it again"


class DamagedFile(InputError):
    """A file lambdaflow wrote is no longer what it wrote; the message names it and how to recover."""

    def __init__(self, path: Path | str, reason: str, remedy: str | None = None) -> None:
        super().__init__(f"{path} cannot be read ({reason}): {remedy or 'restore it from a backup or move it aside'}")
        self.path = path


def read_json(path: Path, remedy: str | None = None) -> Any | None:
    """A small JSON file lambdaflow wrote; None when it does not exist, :class:`DamagedFile` when it is
    not JSON (``remedy`` says what to do about it)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        raise DamagedFile(path, first_line(error), remedy) from None


def fsync_delta_commits(table: Path, after_version: int | None) -> None:
    """Make a local Delta table's commits after ``after_version`` (None: all, and the table's own
    folder) durable, each one's new data files and their folders before its log entry, and the
    checkpoint delta-rs wrote at it, if any. delta-rs writes and renames without fsync: a machine that
    lost power could otherwise keep a log entry whose files never reached the disk."""
    log_dir = table / "_delta_log"
    version = (-1 if after_version is None else after_version) + 1
    if after_version is None:
        fsync_dir(table)
        fsync_dir(table.parent)
    while (entry := log_dir / f"{version:020d}.json").exists():
        folders = set()
        for line in entry.read_text().splitlines():
            added = json.loads(line).get("add") if line.strip() else None
            if added:
                path = table / unquote(added["path"])
                fsync_file(path)
                folders |= {path.parent, path.parent.parent} - {table.parent}
        for folder in sorted(folders, key=lambda each: len(each.parts), reverse=True):
            fsync_dir(folder)
        fsync_file(entry)
        checkpoint = log_dir / f"{version:020d}.checkpoint.parquet"
        if checkpoint.exists():  # delta-rs writes one every 100 commits; `maintain` too
            fsync_file(checkpoint)
            if (log_dir / "_last_checkpoint").exists():
                fsync_file(log_dir / "_last_checkpoint")
        version += 1
    fsync_dir(log_dir)
