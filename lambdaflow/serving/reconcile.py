"""Reconciliation: the batch layer's numbers for a built day beside the speed layer's.

Both sides are read from published files: the batch manifest's file for day D
and the speed layer's snapshots. The two layers saw different sets of events
when they differ at all: the build read each partition's events up to an
offset (the manifest's ``covered``); the speed layer counted each partition up
to its offset. The report explains a difference with the raw store itself: the
day's events are re-aggregated (with the speed layer's Polars logic, which
the parity test holds equal to the dbt models) over the events the build read,
over those plus the late events the speed layer has seen, and over exactly
what the speed layer has seen:

* ``explained_by_late_events``: events of D that reached the raw store after
  the build (the day is due a rebuild);
* ``explained_by_speed_lag``: the difference between what the speed layer has
  counted and what the build read, beyond late events;
* ``unexplained``: the rest. Anything above the threshold
  (``LAMBDAFLOW_RECONCILE_THRESHOLD``, default 0) fails the DAG's reconcile task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from lambdaflow.core import aggregate
from lambdaflow.core.boundary import boundary_of, published_files, read_manifest, speed_may_drop_before
from lambdaflow.core.config import Settings
from lambdaflow.core.errors import InputError, LambdaflowError
from lambdaflow.core.late import late_ranges, read_by_build, require_as_built
from lambdaflow.core.layout import reconcile_report_name
from lambdaflow.core.metrics import Metric, defined
from lambdaflow.core.raw_store import Manifest, RawStore
from lambdaflow.core.raw_tables import FileRange
from lambdaflow.core.storage import Storage
from lambdaflow.serving.query import ServingInputs

KEYS = ["hour"]


@dataclass(frozen=True)
class SpeedPosition:
    """How far the speed layer had counted a partition: its log epoch, next offset and log identity."""

    epoch: int
    next_offset: int
    log_id: str | None = None

    def has_seen(self, log_epoch: int, archived: Manifest | None) -> pl.Expr | bool:
        """Which rows of an archived file (all of one log epoch) the speed layer has counted. The two
        workers number the logs they read apart (a replay starts at epoch 0 again); where the archiver
        knows the identity of the log the speed layer counts, its epoch for that log stands in for the
        speed layer's."""
        epoch = self.epoch
        if self.log_id and archived is not None:
            epoch = next((int(e) for e, log in archived.log_ids.items() if log == self.log_id), epoch)
        if log_epoch != epoch:
            return log_epoch < epoch
        return pl.col("kafka_offset") < self.next_offset


def reconcile(settings: Settings, day: date, metrics: tuple[Metric, ...] | None = None) -> list[dict]:
    """One row per metric for day D; also written to ``batch/reconcile/D.json``."""
    metrics = metrics or defined()
    entry = read_manifest(settings.documents).get("days", {}).get(day.isoformat())
    if entry is None:
        raise LambdaflowError(f"{day} has not been built by the batch layer yet: run `lambdaflow batch --date {day}`")
    names = [m.name for m in metrics]
    store = RawStore(settings.data_dir, settings.topic, settings.storage)
    snapshot = store.snapshot()  # every raw read below from this one version
    ranges = snapshot.file_ranges([day]).get(day, [])
    require_as_built(settings, day, ranges)  # a raw file changed, or rows gone, since the build explain nothing
    published = published_files(entry, settings.data_dir)
    batch = _by_hour(_concat([_read(uri, "published batch file", settings.storage) for uri in published]), names)
    # A published batch file is never replaced (a rebuild commits a new one), and Polars reads a
    # snapshot in one go, so neither can change under these reads.
    snapshots = [
        _read(path, "speed snapshot", settings.storage) for path in ServingInputs.current(settings).speed_snapshots
    ]
    speed_rows = _concat(snapshots)
    speed = _by_hour(speed_rows.filter(pl.col("event_date") == day), names) if speed_rows.width else {}
    positions = _positions(snapshots)
    previous = settings.documents.read(
        reconcile_report_name(day),
        f"delete it: `lambdaflow reconcile --date {day.isoformat()}` writes it again",
    )
    if previous and _dropped_by_speed_layer(settings, day, speed_rows, ranges):
        return _unchecked_rebuild(settings, day, entry, batch, names, previous)

    # The rows the build read are those below what it covered of each partition; the rest are late.
    raw = [_read(each.uri, "raw file", settings.storage) for each in ranges]  # each once, for the reads below
    as_read = read_by_build(entry.get("covered"))
    on_time = [frame.filter(as_read) for frame in raw]
    late = [frame.filter(~as_read) for frame in raw]
    archived = store.manifests(snapshot)
    read = lambda chosen, seen_only: _events(chosen, positions if seen_only else None, archived)  # noqa: E731
    as_built = _metrics_by_hour(read(on_time, False), metrics)
    with_late = _metrics_by_hour(_concat([read(on_time, False), read(late, True)]), metrics)
    seen = _metrics_by_hour(read(raw, True), metrics)
    late_rows = read(late, False)
    late_events = late_rows["event_id"].n_unique() if late_rows.width else 0
    late_files = len(late_ranges(entry, ranges))

    rows = []
    for index, name in enumerate(names):
        hours = sorted(set(batch) | set(speed) | set(as_built) | set(with_late) | set(seen))
        value = lambda table, hour, index=index: table.get(hour, [0] * len(names))[index]  # noqa: E731
        unexplained = {h: value(speed, h) - value(batch, h) - (value(seen, h) - value(as_built, h)) for h in hours}
        rows.append(
            {
                "event_date": day.isoformat(),
                "metric": name,
                "batch": sum(value(batch, h) for h in hours),
                "speed": sum(value(speed, h) for h in hours),
                "difference": sum(value(speed, h) - value(batch, h) for h in hours),
                "explained_by_late_events": sum(value(with_late, h) - value(as_built, h) for h in hours),
                "explained_by_speed_lag": sum(value(seen, h) - value(with_late, h) for h in hours),
                "unexplained": sum(unexplained.values()),
                "hours_differing": [h for h in hours if value(speed, h) != value(batch, h)],
                "hours_unexplained": [h for h, v in unexplained.items() if v != 0],
                "late_files": late_files,
                "late_events": late_events,
                "built_at": entry.get("built_at"),
                "reconciled_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "note": None,
            }
        )
    rows = judged(rows, settings.reconcile_threshold)
    settings.documents.write(reconcile_report_name(day), rows)
    return rows


def judged(rows: list[dict], threshold: int) -> list[dict]:
    """The rows, each with ``within_threshold``: is its unexplained part within the threshold? The report
    keeps the verdict, so that a failed reconciliation stays failed for whoever reads it later (the
    speed layer keeps a day until it has passed)."""
    return [
        {
            **row,
            "within_threshold": abs(row["unexplained"]) <= threshold
            and not (threshold == 0 and row["hours_unexplained"]),
        }
        for row in rows
    ]


def _dropped_by_speed_layer(settings: Settings, day: date, speed_rows: pl.DataFrame, ranges: list[FileRange]) -> bool:
    """Has the speed layer dropped D? Only an old enough day can be, and then a partition with raw
    events of D (its files, ``ranges``) has no row of D in its snapshot."""
    boundary = boundary_of(read_manifest(settings.documents))
    if boundary is None or day >= speed_may_drop_before(boundary):
        return False
    with_events = {r.partition for r in ranges}
    counted = set(speed_rows.filter(pl.col("event_date") == day)["kafka_partition"]) if speed_rows.width else set()
    return bool(with_events - counted)


def _unchecked_rebuild(
    settings: Settings, day: date, entry: dict, batch: dict, names: list[str], previous: list[dict]
) -> list[dict]:
    """A rebuild of a day reconciled before that the speed layer has dropped since:
    there is nothing left to compare with, so the report says so and keeps the last comparison."""
    reconciled_at = previous[0].get("reconciled_at")
    rows = []
    for index, name in enumerate(names):
        rows.append(
            {
                "event_date": day.isoformat(),
                "metric": name,
                "batch": sum(values[index] for values in batch.values()),
                "speed": None,
                "difference": None,
                "explained_by_late_events": 0,
                "explained_by_speed_lag": 0,
                "unexplained": 0,
                "hours_differing": [],
                "hours_unexplained": [],
                "late_files": 0,
                "late_events": 0,
                "built_at": entry.get("built_at"),
                "reconciled_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "note": f"rebuilt after the speed layer dropped {day}; last compared at {reconciled_at}",
            }
        )
    settings.documents.write(reconcile_report_name(day), rows)
    return rows


def require_within_threshold(rows: list[dict], threshold: int) -> None:
    """Fail, naming each metric and hour, when an unexplained difference is above the threshold."""
    wrong = [row for row in judged(rows, threshold) if not row["within_threshold"]]
    if wrong:
        detail = "; ".join(
            f"{row['metric']} by {row['unexplained']:+d} (hours {_listed(row['hours_unexplained'])})" for row in wrong
        )
        raise LambdaflowError(
            f"{rows[0]['event_date']}: the layers differ beyond what late events and the "
            f"speed layer's lag explain (threshold {threshold}): {detail}"
        )


def _listed(hours: list[int], most: int = 6) -> str:
    if len(hours) <= most:
        return str(hours)
    return "[" + ", ".join(map(str, hours[: most - 1])) + f", ... {len(hours)} hours]"


def _positions(snapshots: list[pl.DataFrame]) -> dict[int, SpeedPosition]:
    positions = {}
    for frame in snapshots:
        if frame.height:
            row = frame.row(0, named=True)
            positions[row["kafka_partition"]] = SpeedPosition(row["epoch"], row["next_offset"], row.get("log_id"))
    return positions


def _events(
    files: list[pl.DataFrame],
    positions: dict[int, SpeedPosition] | None,
    archived: dict[int, Manifest] | None = None,
) -> pl.DataFrame:
    """The valid events of ``files`` (raw files read already, or rows of them); with ``positions``, only
    those the speed layer has counted."""
    frames = []
    for frame in files:
        if positions is not None:
            if not frame.height:
                continue
            partition, log_epoch = frame["kafka_partition"][0], frame["log_epoch"][0]
            position = positions.get(partition)
            if position is None:
                continue
            seen = position.has_seen(log_epoch, (archived or {}).get(partition))
            frame = frame.filter(seen) if isinstance(seen, pl.Expr) else (frame if seen else frame.clear())
        frames.append(frame)
    return _concat(frames)


def _read(path: Path | str, what: str, storage: Storage | None = None) -> pl.DataFrame:
    """A whole Parquet file (a local one, or one of ``storage``'s), or one clear line naming the file
    that cannot be read."""
    try:
        if storage is None:
            return pl.read_parquet(path)
        with storage.open(str(path)) as handle:
            return pl.read_parquet(handle)
    except (OSError, pl.exceptions.PolarsError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"{what} {path} cannot be read ({reason[:300]})") from None


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [frame for frame in frames if frame.width]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _metrics_by_hour(events: pl.DataFrame, metrics: tuple[Metric, ...]) -> dict[int, list[int]]:
    if events.height == 0:
        return {}
    return _by_hour(aggregate.hourly_metrics(events, metrics), [m.name for m in metrics])


def _by_hour(frame: pl.DataFrame, names: list[str]) -> dict[int, list[int]]:
    """{hour: [metric totals over countries]}; a metric missing from the frame counts as 0."""
    present = [n for n in names if n in frame.columns]
    totals = frame.group_by("hour").agg(pl.col(present).sum()) if frame.height else frame
    table = {}
    for row in totals.iter_rows(named=True):
        table[int(row["hour"])] = [int(row[n] or 0) if n in present else 0 for n in names]
    return table
