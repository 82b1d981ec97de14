"""The batch manifest as the speed layer follows it, and which days it keeps: it drops a day only
once the batch serves it whole, its reconciliation passed, and the grace period after the boundary
is over."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

from lambdaflow.core import reconciled
from lambdaflow.core.boundary import BatchHours, boundary_of, read_manifest, start_of
from lambdaflow.core.documents import Documents
from lambdaflow.core.files import DamagedFile
from lambdaflow.core.layout import BATCH_MANIFEST

log = logging.getLogger(__name__)


def first_day_kept(documents: Documents, manifest: dict, earliest: date | None, grace: timedelta) -> date | None:
    """The first day the speed layer keeps (None: keep all): it drops the days before the boundary (less
    the grace) that the batch serves whole and whose reconciliation passed, never a day the batch has
    not built (the speed layer alone serves it) or one whose reconciliation failed or has not run."""
    hours = BatchHours.of(manifest)
    if hours.boundary is None or earliest is None:
        return None
    first_kept = (hours.boundary - grace).date()
    day = earliest
    while day < first_kept:
        if hours.until(day) < start_of(day + timedelta(days=1)) or not reconciled.passed(documents, day):
            return day
        day += timedelta(days=1)
    return first_kept


class FollowedManifest:
    """The batch manifest as last read, and which hours the batch serves by it (BatchHours)."""

    def __init__(self, documents: Documents) -> None:
        self.documents = documents
        self.boundary: datetime | None = None
        self.hours = BatchHours.of(None)
        self._manifest: dict | None = None
        self._damaged = False
        self._read_version: tuple[int, int, int] | None = None

    def read(self) -> dict | None:
        """Read the batch manifest and its boundary. While it is damaged, say so once and return None:
        counting goes on at the last boundary read (it never moves back) and no day is dropped.

        Each micro-batch asks, and the manifest grows by a day each day: it is parsed again only once
        replaced (publishing renames a new file over it, or PUTs a new object), else a stat (a HEAD
        request) answers."""
        version = self._version()
        if version is not None and version == self._read_version and self._manifest is not None:
            return self._manifest
        try:
            manifest = read_manifest(self.documents)
        except DamagedFile as error:
            if not self._damaged:
                log.warning(
                    "%s; counting goes on at the last boundary read (%s) and no day is dropped", error, self.boundary
                )
            self._damaged = True
            return None
        if self._damaged:
            log.info("the batch manifest is readable again")
        self._damaged = False
        self.boundary = boundary_of(manifest)
        self.hours = BatchHours.of(manifest)
        self._manifest, self._read_version = manifest, version
        return manifest

    def _version(self) -> tuple | None:
        """The manifest's identity: a replacement is another inode (another ETag on S3), an edit in
        place another size or modification time."""
        return self.documents.version(BATCH_MANIFEST)

    def first_day_kept(self, earliest: date | None, grace: timedelta) -> date | None:
        """:func:`first_day_kept` by the manifest read now (None, keep all, while it is damaged)."""
        manifest = self.read()
        return None if manifest is None else first_day_kept(self.documents, manifest, earliest, grace)
