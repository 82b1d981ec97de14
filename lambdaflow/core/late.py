"""Late data (invariant 8): events archived after their day was built.

Each build publishes, per Kafka partition, the offset after the last event of
the day it read (the manifest's ``covered``, from one snapshot of the raw
table). The archiver commits each partition in offset order, so every event of
day D at or past that point reached the raw store after the build: it is late.
`lambdaflow status` lists the days with late events, reconciliation accounts
for them, and the `lambda_batch_late` DAG rebuilds those days.

Telling late events by their Kafka coordinates, not by file names, keeps the
answer through compaction (lambdaflow.batch.compaction), which merges a day's
files, and whatever file holds them.

The build record (``batch/builds/D.json``) keeps the files the build read with
their SHA-256 and how many rows they held, so a later build or reconciliation
notices a file that changed, or rows that went missing, since.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import date, datetime, timedelta

import polars as pl

from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.days import midnight
from lambdaflow.core.layout import build_record_name
from lambdaflow.core.raw_store import RESTORE, RawFileDamaged, RawStore, require_readable
from lambdaflow.core.raw_tables import FileRange
from lambdaflow.core.storage import Storage, file_name

log = logging.getLogger(__name__)

DAY = timedelta(days=1)

Covered = dict[str, dict]
"""Per partition (its number as a string), the build's ``{"epoch", "offset"}``: it read every event of
the day below that point (raw_store.read_ends)."""


def read_build_record(settings: Settings, day: date) -> dict | None:
    """What the day's last build read: its raw files and their SHA-256; None for a day never built."""
    return settings.documents.read(
        build_record_name(day),
        f"move it aside, then rebuild the day with `lambdaflow batch --date {day.isoformat()}`",
    )


def digest(uri: str, storage: Storage) -> str:
    sha256 = hashlib.sha256()
    with storage.open(uri) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(chunk)
    return sha256.hexdigest()


def holds_late(each: FileRange, covered: Covered) -> bool:
    """Does the file hold an event past what the build read of its partition?"""
    end = covered.get(str(each.partition))
    return end is None or (each.epoch, each.last) >= (end["epoch"], end["offset"])


def holds_read(each: FileRange, covered: Covered) -> bool:
    """Does the file hold an event the build read?"""
    end = covered.get(str(each.partition))
    return end is not None and (each.epoch, each.first) < (end["epoch"], end["offset"])


def read_by_build(covered: Covered | None) -> pl.Expr:
    """True for the raw rows the build read (all of them when what it read is not known: a manifest
    from before ``covered`` existed)."""
    if covered is None:
        return pl.lit(True)
    terms = [
        (pl.col("kafka_partition") == int(partition))
        & (
            (pl.col("log_epoch") < end["epoch"])
            | ((pl.col("log_epoch") == end["epoch"]) & (pl.col("kafka_offset") < end["offset"]))
        )
        for partition, end in covered.items()
    ]
    return pl.any_horizontal(terms) if terms else pl.lit(False)


def rows_read(ranges: Iterable[FileRange], covered: Covered, storage: Storage) -> int:
    """How many rows of ``ranges`` the build read: from the files' statistics, reading the offsets of a
    file that holds both read and late rows."""
    total = 0
    for each in ranges:
        if not holds_read(each, covered):
            continue
        if not holds_late(each, covered):
            total += each.rows
            continue
        with storage.open(each.uri) as handle:
            coordinates = pl.read_parquet(handle, columns=["kafka_partition", "log_epoch", "kafka_offset"])
        total += coordinates.filter(read_by_build(covered)).height
    return total


def require_as_built(settings: Settings, day: date, ranges: list[FileRange]) -> dict[str, str]:
    """Refuse the day's covered raw files now (``ranges``) when one is not a readable Parquet file, or
    one the day's last build read has changed since, or rows it read are gone (invariant 1: an
    archived row is never changed or removed; compaction merges files, keeping every row). Returns each
    file's SHA-256, by name."""
    storage = settings.storage
    for each in ranges:
        require_readable(each.uri, storage)
    record = read_build_record(settings, day) or {}
    built = f"the build of {day} at {record.get('built_at')}"
    present = {file_name(each.uri): each.uri for each in ranges}
    digests = {name: digest(uri, storage) for name, uri in present.items()}
    for name, before in (record.get("raw_file_sha256") or {}).items():
        if name in digests and digests[name] != before:
            raise RawFileDamaged(
                f"raw file {present[name]} has changed since {built} read it "
                f"(sha256 {before[:12]}... then, {digests[name][:12]}... now): {RESTORE}"
            )
    gone = sorted(name for name in record.get("raw_files", []) if name not in present)
    if gone:
        folder = f"{RawStore(settings.data_dir, settings.topic, storage).tables.events_uri}/event_date={day}"
        if "rows" not in record or "covered" not in record:  # written before builds counted their rows
            log.warning(
                "%d raw file(s) that %s read have left the table (compacted, e.g. %s/%s); its record predates "
                "row counts, so they are not checked: rebuild the day to record them",
                len(gone),
                built,
                folder,
                gone[0],
            )
            return digests
        now = rows_read(ranges, record["covered"], storage)
        if now != record["rows"]:
            raise RawFileDamaged(
                f"raw rows of {folder} have changed since {built} read them ({record['rows']} rows then, "
                f"{now} now; {len(gone)} of its files have left the table, e.g. {gone[0]}): {RESTORE}"
            )
    return digests


def late_ranges(entry: dict | None, ranges: Iterable[FileRange]) -> list[FileRange]:
    """The files of a built day (its manifest ``entry``) that hold late events (none when what the build
    read is not known)."""
    if entry is None or "covered" not in entry:
        return []
    return [each for each in ranges if holds_late(each, entry["covered"])]


def late_days(settings: Settings) -> dict[date, int]:
    """Whole built days whose raw files hold events archived after their build, and how many files."""
    days = read_manifest(settings.documents).get("days", {})
    whole = [
        day
        for day in sorted(map(date.fromisoformat, days))
        # a partial day is not late: its next build reads whatever has arrived
        if datetime.fromisoformat(days[day.isoformat()]["built_until"]) >= midnight(day) + DAY
    ]
    snapshot = RawStore(settings.data_dir, settings.topic, settings.storage).snapshot()
    found = {}
    for day, ranges in snapshot.file_ranges(whole).items():
        late = late_ranges(days[day.isoformat()], ranges)
        if late:
            found[day] = len(late)
    return found
