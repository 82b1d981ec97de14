"""Publishing a built day (invariant 5): replace its built hours in the published
table (:mod:`lambdaflow.batch.published_table`), then replace the batch manifest,
whose boundary is the end of the contiguous run of built hours. A replaced file
stays in the table's storage until `lambdaflow maintain` vacuums it, after the
kept period, for the queries still reading it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from lambdaflow.batch.dbt import as_vars, run_dbt
from lambdaflow.batch.published_table import PublishedHours
from lambdaflow.core.boundary import read_manifest_for_update
from lambdaflow.core.config import Settings
from lambdaflow.core.days import midnight
from lambdaflow.core.documents import Changed
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.files import temp_path_for
from lambdaflow.core.layout import BATCH_MANIFEST

log = logging.getLogger(__name__)

SWAP_ATTEMPTS = 5
"""Conditional replacements of the manifest tried before the build gives up (another host publishing)."""


def publish(
    settings: Settings, day: date, until: datetime, variables: dict, covered: dict[str, dict[str, int]] | None = None
) -> dict:
    """Export the day's built hours and swap the batch manifest to include them, with what the build
    read of each partition (``covered``): the speed layer tells by it which users the batch counted."""
    return publish_days(settings, {day: until}, variables, {day: covered or {}})


def publish_days(
    settings: Settings,
    untils: dict[date, datetime],
    variables: dict,
    covered: dict[date, dict[str, dict[str, int]]],
    on_published: Callable[[date], None] | None = None,
) -> dict:
    """Export the built hours of each day of ``untils`` (day: built until) in one dbt run, then publish
    the days oldest first, each as a build of that day alone does: its file, then the manifest swapped
    (``on_published`` is called after each). Returns the last manifest."""
    temps = {
        day: temp_path_for(Path(f"hourly-{day.isoformat()}.parquet"), settings.layout.temp("batch"))
        for day in sorted(untils)
    }
    exports = [
        {"ds": day.isoformat(), "until": untils[day].replace(tzinfo=None).isoformat(sep=" "), "path": str(temps[day])}
        for day in temps
    ]
    try:
        run_dbt(
            settings,
            "run-operation",
            "export_built_days",
            "--args",
            as_vars({"days": exports}),
            "--vars",
            as_vars(variables),
        )
        table = PublishedHours(settings.storage)
        document: dict = {}
        for day, temp in temps.items():
            files = table.replace_day(day, temp)  # committed (and durable) before the manifest names it
            document = swap_in(settings, day, files, untils[day], covered.get(day) or {})
            if on_published is not None:
                on_published(day)
        return document
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def swap_in(
    settings: Settings, day: date, files: list[str], until: datetime, covered: dict[str, dict[str, int]]
) -> dict:
    """Replace the batch manifest with one that names ``files`` for ``day``, and its new boundary. On an
    S3 store the replacement is conditional: a manifest another host replaced meanwhile is read again
    and this day swapped into it, so neither build's day is lost."""
    shown = [_relative(settings, uri) for uri in files]
    for attempt in range(SWAP_ATTEMPTS):
        manifest, version = read_manifest_for_update(settings.documents)
        document = _with_day(manifest or {"days": {}}, day, shown, until, covered)
        try:
            settings.documents.write_if_unchanged(BATCH_MANIFEST, document, version)
        except Changed as error:
            log.warning("%s; swapping %s in again (attempt %d)", error, day, attempt + 1)
            continue
        log.info("published %s until %s; boundary %s", day, until.isoformat(), document["boundary"])
        return document
    raise LambdaflowError(f"the batch manifest kept changing under the publication of {day}; run the build again")


def _with_day(manifest: dict, day: date, shown: list[str], until: datetime, covered: dict) -> dict:
    """The manifest with ``day`` naming the files ``shown``, and the boundary that follows."""
    days = dict(manifest.get("days", {}))
    days[day.isoformat()] = {
        **({"file": shown[0]} if len(shown) == 1 else {}),  # the name manifests had before "files"
        "files": shown,
        "built_until": until.isoformat(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "covered": covered,
    }
    previous = manifest.get("boundary")
    boundary = _contiguous_end(days, since=datetime.fromisoformat(previous) if previous else None)
    return {
        "boundary": boundary.isoformat(),
        "days": dict(sorted(days.items())),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _relative(settings: Settings, uri: str) -> str:
    """A file under the data directory by its path relative to it (the manifest then survives a move
    of the whole directory), any other by its URI."""
    if settings.storage.is_s3 or not Path(uri).is_relative_to(settings.data_dir):
        return uri
    return str(Path(uri).relative_to(settings.data_dir))


def _contiguous_end(days: dict[str, dict], since: datetime | None) -> datetime:
    """The end of the run of built hours that reaches ``since`` (the boundary so far), or that starts
    at the earliest built day when there is none yet. It never moves back, and a day built far
    before the boundary, or rebuilt with fewer hours, does not hold it where it is."""
    end = since
    for key in sorted(days):
        start = midnight(date.fromisoformat(key))
        if end is None:
            end = start
        if start > end:  # a day not built (or built only in part) lies in between
            break
        end = max(end, datetime.fromisoformat(days[key]["built_until"]))
    if end is None:
        raise ValueError("no day built and no boundary: there is no contiguous run of built hours")
    return end
