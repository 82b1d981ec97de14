"""The serving boundary: batch rows before it, realtime rows from it on (invariant 5).

The batch layer publishes it in one manifest, replaced atomically: a batch
document (``batch/manifest.json`` under the data directory, or beside the
tables on an S3 storage); until the batch has built anything there is no
boundary and the speed layer serves everything it has counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lambdaflow.core.documents import Documents
from lambdaflow.core.files import DamagedFile
from lambdaflow.core.layout import BATCH_MANIFEST

# The speed layer keeps the days it has counted until this long before the boundary, and a
# built day until it has been reconciled; after that it may drop them.
SPEED_RETENTION_GRACE = timedelta(days=1)


def speed_may_drop_before(boundary: datetime) -> date:
    """Reconciled days before this one may be gone from the speed layer."""
    return (boundary - SPEED_RETENTION_GRACE).date()


REBUILD = "move it aside, then rebuild the built days with `lambdaflow batch --date D` or a backfill of lambda_batch"


def read_manifest(documents: Documents) -> dict:
    """The batch manifest, checked: ``{"boundary", "days": {D: {"files", "built_until", ...}}}``; {} before
    any build. Raises :class:`DamagedFile` for anything else."""
    return read_manifest_for_update(documents)[0]


def read_manifest_for_update(documents: Documents) -> tuple[dict, str | None]:
    """:func:`read_manifest`, and what a conditional replacement checks it against (see Documents)."""
    document, version = documents.read_for_update(BATCH_MANIFEST, REBUILD)
    if document is None:
        return {}, version
    problem = _shape_problem(document)
    if problem:
        raise DamagedFile(documents.where(BATCH_MANIFEST), problem, REBUILD)
    return document, version


def _shape_problem(document: object) -> str | None:
    if not isinstance(document, dict):
        return f"a JSON {type(document).__name__}, not an object"
    days = document.get("days", {})
    if not isinstance(days, dict):
        return '"days" is not an object'
    for key, entry in days.items():
        try:
            date.fromisoformat(key)
        except ValueError:
            return f"the day {key[:40]!r} is not YYYY-MM-DD"
        if not isinstance(entry, dict) or not isinstance(entry.get("built_until"), str):
            return f'the entry for {key} lacks "built_until"'
        files = entry.get("files", [entry.get("file")])
        if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
            return f'the entry for {key} names no published files ("files")'
    try:
        boundary_of(document)
    except (TypeError, ValueError):
        return f'"boundary" {str(document.get("boundary"))[:40]!r} is not an ISO date and time'
    return None


def published_files(entry: dict, data_dir: Path) -> list[str]:
    """The published files a manifest's day entry names (none for a day without events), as paths or
    URIs: a name relative to the data directory is made absolute."""
    names = entry["files"] if "files" in entry else [entry["file"]]
    return [name if "://" in name else str(data_dir / name) for name in names]


def boundary_of(manifest: dict | None) -> datetime | None:
    """The boundary a manifest holds, as a naive UTC datetime."""
    if not manifest or not manifest.get("boundary"):
        return None
    return _naive_utc(datetime.fromisoformat(manifest["boundary"]))


def log_id(first_record: dict | None) -> str | None:
    """A partition log's identity: its first record (offset 0), by timestamp and checksum. The archiver
    and the stream worker number the logs they read apart (log epochs); a restarted memory-only broker
    reuses offsets, so two workers tell whether they read the same log by this."""
    if not first_record or first_record.get("offset") != 0:
        return None
    return f"{first_record.get('timestamp')}-{first_record.get('crc32')}"


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def start_of(day: date) -> datetime:
    """Midnight UTC starting ``day``, naive like the boundary."""
    return datetime(day.year, day.month, day.day)


@dataclass(frozen=True)
class BatchHours:
    """Which hours the batch layer serves: of each built day, the hours before both the boundary and
    the day's ``built_until``. Every other hour, a day not built included, is the speed layer's
    (invariant 5); times are naive UTC, like the boundary."""

    boundary: datetime | None
    served_until: dict[date, datetime]
    """Per built day that serves at least one hour from the batch, the end of those hours."""
    covered: dict[date, dict[str, dict]]
    """Per built day, what its build read of each partition: ``{"epoch", "offset", "log"}`` (the
    archiver's log epoch, the exclusive end offset, and the log's identity when known)."""

    @classmethod
    def of(cls, manifest: dict | None) -> BatchHours:
        boundary = boundary_of(manifest)
        served_until, covered = {}, {}
        for key, entry in (manifest or {}).get("days", {}).items():
            day = date.fromisoformat(key)
            covered[day] = entry.get("covered") or {}
            if boundary is None:
                continue
            until = min(boundary, _naive_utc(datetime.fromisoformat(entry["built_until"])))
            if until > start_of(day):
                served_until[day] = until
        return cls(boundary, served_until, covered)

    def until(self, day: date) -> datetime:
        """The end of ``day``'s batch-served hours: its start when the batch serves none of them."""
        return self.served_until.get(day, start_of(day))

    def serves(self, hour: datetime) -> bool:
        """Does the batch serve the hour starting at ``hour``?"""
        return hour < self.until(hour.date())

    def covered_end(self, day: date, partition: int, epoch: int, log: str | None = None) -> int:
        """The offsets of ``partition`` below this were read by ``day``'s build from the log the caller
        reads (identified by ``log``, else by its epoch ``epoch``); 0 when the day is not built, or its
        build read another log."""
        read = self.covered.get(day, {}).get(str(partition))
        if not read:
            return 0
        same = read["log"] == log if read.get("log") and log else read.get("epoch") == epoch
        return read["offset"] if same else 0
