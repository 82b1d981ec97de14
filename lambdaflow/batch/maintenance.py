"""Compaction and retention for the tables, as Delta provides them: `lambdaflow
maintain` and the `lambda_tables_maintenance` DAG.

The events table's small files are first merged (lambdaflow.batch.compaction).
Then each table (the raw events and dead letter, the published hours) is
vacuumed: the files no version younger than the kept period needs go (events
files a compaction merged, a dead-letter file that a later batch of its
partition replaced, a published day's file that a rebuild replaced, a file a
crashed or fenced commit wrote and never committed), and a checkpoint is
written so that opening the table reads one Parquet file instead of every
commit since the last one (delta-rs also writes one every 100 commits); log
entries older than the table's log retention (30 days) go with it. A file of
the current version is never removed, nor one younger than the kept period, so
a reader that took its snapshot within that period still finds all of its
files, and a commit in flight keeps the files it is writing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from lambdaflow.batch.compaction import compact_events
from lambdaflow.batch.published_table import PublishedHours
from lambdaflow.core.config import Settings
from lambdaflow.core.errors import InputError
from lambdaflow.core.files import fsync_delta_commits
from lambdaflow.core.raw_tables import RawTables

log = logging.getLogger(__name__)

KEEP = timedelta(days=7)
"""Delta's own default retention."""
SHORTEST_KEEP = timedelta(hours=1)
"""Less would let a vacuum remove the files of a commit still in flight, or of a reader's snapshot."""


def maintain_tables(settings: Settings, keep: timedelta = KEEP, dry_run: bool = False) -> list[dict]:
    """Compact the events table, then vacuum and checkpoint the topic's raw tables and the published hours;
    one report per table."""
    if keep < SHORTEST_KEEP:
        raise InputError(f"keep files for at least {SHORTEST_KEEP} ({keep} asked): younger ones may be in use")
    compacted = {"events": compact_events(settings, dry_run=dry_run)}
    reports = []
    raw = RawTables(settings.storage, settings.topic)
    published = PublishedHours(settings.storage)
    uris = {"events": raw.events_uri, "dead_letter": raw.dead_letter_uri, "published_hours": published.uri}
    existing = {**raw.existing(), "published_hours": published.open()}
    for name, table in existing.items():
        if table is None:
            continue
        before = table.version()
        removed = table.vacuum(
            retention_hours=int(keep.total_seconds() // 3600),
            dry_run=dry_run,
            enforce_retention_duration=False,  # the check above applies instead of the table's 7 days
            full=True,  # files no commit ever added too
        )
        if not dry_run:
            table.create_checkpoint()
            table.cleanup_metadata()
            if not settings.storage.is_s3:
                fsync_delta_commits(Path(uris[name]), before)
        log.info(
            "%s: %s %d file(s) no version needs",
            uris[name],
            "would remove" if dry_run else "removed",
            len(removed),
        )
        reports.append(
            {
                "table": name,
                "uri": uris[name],
                "version": table.version(),
                "removed_files": len(removed),
                **compacted.get(name, {"compacted_files": 0, "written_files": 0}),
                "dry_run": dry_run,
            }
        )
    return reports
