"""Late data (invariant 8): raw files published after their day was built.

Each build records which raw files it read (``batch/builds/D.json``). A file
of day D that the archiver publishes afterwards holds events that reached the
raw store late; `lambdaflow status` lists such days, reconciliation accounts
for them, and the `lambda_batch_late` DAG rebuilds them.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta

from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.days import midnight
from lambdaflow.core.layout import build_record_name
from lambdaflow.core.raw_store import RESTORE, RawFileDamaged, RawStore, require_readable
from lambdaflow.core.storage import Storage, file_name

DAY = timedelta(days=1)


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


def require_as_built(settings: Settings, day: date, files: list[str]) -> dict[str, str]:
    """Refuse ``files`` (the URIs of the day's covered raw files now) when a file the day's last build
    read is missing or has changed since (invariant 1: a published raw file is never changed); also
    refuse one that is not a readable Parquet file. Returns each file's SHA-256, by name."""
    storage = settings.storage
    for uri in files:
        require_readable(uri, storage)
    record = read_build_record(settings, day) or {}
    built = f"the build of {day} at {record.get('built_at')}"
    present = {file_name(uri): uri for uri in files}
    folder = f"{RawStore(settings.data_dir, settings.topic, storage).tables.events_uri}/event_date={day}"
    for name in record.get("raw_files", []):
        if name not in present:
            raise RawFileDamaged(f"raw file {folder}/{name} is missing, though {built} read it: {RESTORE}")
    digests = {name: digest(uri, storage) for name, uri in present.items()}
    for name, before in (record.get("raw_file_sha256") or {}).items():
        if name in digests and digests[name] != before:
            raise RawFileDamaged(
                f"raw file {present[name]} has changed since {built} read it "
                f"(sha256 {before[:12]}... then, {digests[name][:12]}... now): {RESTORE}"
            )
    return digests


def late_files(settings: Settings, day: date, files: list[str] | None = None) -> list[str]:
    """The day's raw files (``files``, else read now) published after its last build (none for a day
    never built)."""
    record = read_build_record(settings, day)
    if record is None:
        return []
    built = set(record["raw_files"])
    files = (
        RawStore(settings.data_dir, settings.topic, settings.storage).files_for_date(day) if files is None else files
    )
    return [uri for uri in files if file_name(uri) not in built]


def late_days(settings: Settings) -> dict[date, int]:
    """Whole built days with raw files published after their build, and how many."""
    days = read_manifest(settings.documents).get("days", {})
    whole = [
        day
        for day in sorted(map(date.fromisoformat, days))
        # a partial day is not late: its next build reads whatever has arrived
        if datetime.fromisoformat(days[day.isoformat()]["built_until"]) >= midnight(day) + DAY
    ]
    found = {}
    for day, files in RawStore(settings.data_dir, settings.topic, settings.storage).files_for_dates(whole).items():
        late = late_files(settings, day, files)
        if late:
            found[day] = len(late)
    return found
