"""Publishing a built day (invariant 5): export its built hours to Parquet and
replace the batch manifest, whose boundary is the end of the contiguous run of
built hours. A replaced file is kept a while for the queries still reading it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lambdaflow.batch.dbt import as_vars, run_dbt
from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.days import midnight
from lambdaflow.core.files import DamagedFile, fsync_file, publish_replacing, read_json, replace_json, temp_path_for

log = logging.getLogger(__name__)


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
    finals = {
        day: settings.layout.published_folder(day) / f"hourly-{uuid.uuid4().hex[:12]}.parquet" for day in sorted(untils)
    }
    temps = {day: temp_path_for(final, settings.layout.temp("batch")) for day, final in finals.items()}
    exports = [
        {"ds": day.isoformat(), "until": untils[day].replace(tzinfo=None).isoformat(sep=" "), "path": str(temps[day])}
        for day in finals
    ]
    run_dbt(
        settings,
        "run-operation",
        "export_built_days",
        "--args",
        as_vars({"days": exports}),
        "--vars",
        as_vars(variables),
    )
    document: dict = {}
    for day, final in finals.items():
        fsync_file(temps[day])
        publish_replacing(temps[day], final)  # the file and its new folder are durable before the manifest names them
        document = _swap_in(settings, day, final, untils[day], covered.get(day) or {})
        if on_published is not None:
            on_published(day)
    return document


def _swap_in(settings: Settings, day: date, final: Path, until: datetime, covered: dict[str, dict[str, int]]) -> dict:
    """Replace the batch manifest with one that names ``final`` for ``day``, and its new boundary."""
    manifest = read_manifest(settings.data_dir) or {"days": {}}
    days = dict(manifest.get("days", {}))
    replaced = days.get(day.isoformat())
    days[day.isoformat()] = {
        "file": str(final.relative_to(settings.data_dir)),
        "built_until": until.isoformat(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "covered": covered,
    }
    previous = manifest.get("boundary")
    boundary = _contiguous_end(days, since=datetime.fromisoformat(previous) if previous else None)
    document = {
        "boundary": boundary.isoformat(),
        "days": dict(sorted(days.items())),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    replace_json(settings.layout.batch_manifest, document)
    if replaced:
        _remove_later(settings, replaced["file"])
    log.info("published %s until %s; boundary %s", day, until.isoformat(), document["boundary"])
    return document


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


def _remove_later(settings: Settings, relative: str) -> None:
    """A replaced file may still be read by a query that began before the swap: keep it a while."""
    retired = settings.layout.retired_list
    entries = _retired_entries(retired)
    now = datetime.now(UTC)
    keep = []
    for entry in entries + [{"file": relative, "retired_at": now.isoformat()}]:
        if now - datetime.fromisoformat(entry["retired_at"]) > timedelta(minutes=10):
            (settings.data_dir / entry["file"]).unlink(missing_ok=True)
        else:
            keep.append(entry)
    replace_json(retired, keep)


def _retired_entries(path: Path) -> list[dict]:
    """The replaced files still kept, from ``path``. It only schedules deletions, and it is read after
    the day is published: a damaged list, or an entry that names no published file, is logged and
    dropped (its file stays on disk) instead of failing a build that has already published."""
    try:
        document = read_json(path)
    except DamagedFile as error:
        log.warning("%s; writing it anew (the files it listed stay on disk)", error)
        return []
    kept = []
    for entry in document if isinstance(document, list) else [document] if document is not None else []:
        try:
            file = Path(entry["file"])
            aware = datetime.fromisoformat(entry["retired_at"]).tzinfo is not None
            valid = aware and file.parts[:2] == ("batch", "published") and ".." not in file.parts
        except (TypeError, KeyError, ValueError):
            valid = False
        if valid:
            kept.append(entry)
        else:
            log.warning("%s: dropping %r, which names no replaced published file", path, entry)
    return kept
