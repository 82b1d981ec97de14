"""Which days the speed layer may drop: only what the batch serves whole and has reconciled."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta

import pytest

from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.files import replace_json
from lambdaflow.core.layout import Layout
from lambdaflow.serving.reconcile import judged, require_within_threshold
from stream_worker.retention import FollowedManifest, first_day_kept

FIRST = date(2026, 11, 20)
GRACE = timedelta(days=1)


def manifest(built: list[date], boundary: date) -> dict:
    return {
        "boundary": f"{boundary.isoformat()}T00:00:00+00:00",
        "days": {
            day.isoformat(): {
                "file": f"batch/published/{day}.parquet",
                "built_until": f"{(day + timedelta(days=1)).isoformat()}T00:00:00+00:00",
            }
            for day in built
        },
    }


def report(data_dir, day: date, unexplained: int, threshold: int = 0) -> list[dict]:
    rows = judged(
        [
            {
                "event_date": day.isoformat(),
                "metric": "events",
                "unexplained": unexplained,
                "hours_unexplained": [3] if unexplained else [],
            }
        ],
        threshold,
    )
    replace_json(Layout(data_dir).reconcile_report(day), rows)
    return rows


def test_a_failed_reconciliation_keeps_its_day_in_the_speed_layer(tmp_path) -> None:
    """The report is written before the threshold check fails the task; a day whose report only exists
    was dropped all the same, and the difference could never be looked into again."""
    days = [FIRST + timedelta(days=n) for n in range(5)]
    built = manifest(days, boundary=days[-1] + timedelta(days=1))
    report(tmp_path, days[0], 0)
    failed = report(tmp_path, days[1], 7)
    with pytest.raises(LambdaflowError, match="events by \\+7"):
        require_within_threshold(failed, 0)
    assert first_day_kept(tmp_path, built, days[0], GRACE) == days[1]
    # Once the day passes (rebuilt, reconciled again), the days after it go too, up to the grace.
    report(tmp_path, days[1], 0)
    for day in days[2:4]:
        report(tmp_path, day, 2, threshold=5)  # within a threshold of 5: passed
    assert first_day_kept(tmp_path, built, days[0], GRACE) == days[4]


def test_a_day_not_built_is_never_dropped(tmp_path) -> None:
    days = [FIRST + timedelta(days=n) for n in range(5)]
    for day in days:
        report(tmp_path, day, 0)
    built = manifest([d for d in days if d != days[2]], boundary=days[-1] + timedelta(days=1))
    assert first_day_kept(tmp_path, built, days[0], GRACE) == days[2]
    assert first_day_kept(tmp_path, {}, days[0], GRACE) is None  # nothing built: keep all


def test_a_damaged_report_counts_as_not_reconciled(tmp_path) -> None:
    days = [FIRST + timedelta(days=n) for n in range(3)]
    report(tmp_path, days[0], 0)
    Layout(tmp_path).reconcile_report(days[1]).write_text("{not json")
    built = manifest(days, boundary=days[-1] + timedelta(days=1))
    assert first_day_kept(tmp_path, built, days[0], GRACE) == days[1]


def test_reconciliation_maps_the_speed_layers_epoch_to_the_archivers_by_the_log(tmp_path) -> None:
    """The speed layer, replayed after a broker restart, counts the new log as its epoch 0; the archiver
    calls it epoch 1. What the speed layer has seen of the archiver's epoch-1 files is its offsets."""
    import polars as pl

    from lambdaflow.core.raw_store import Manifest
    from lambdaflow.serving.reconcile import SpeedPosition

    archived = Manifest(topic="events", partition=0, epoch=1, next_offset=9, log_ids={"0": "old", "1": "new"})
    replayed = SpeedPosition(epoch=0, next_offset=5, log_id="new")
    in_new_log = 1  # a file of the archiver's epoch 1
    frame = pl.DataFrame({"kafka_offset": list(range(9))})
    seen = replayed.has_seen(in_new_log, archived)
    assert isinstance(seen, pl.Expr) and frame.filter(seen)["kafka_offset"].to_list() == [0, 1, 2, 3, 4]
    assert replayed.has_seen(0, archived) is True  # a file of the log before it
    unknown = SpeedPosition(epoch=0, next_offset=5, log_id=None)  # a state from before log identities
    assert unknown.has_seen(in_new_log, archived) is False


def test_the_followed_manifest_is_parsed_again_only_once_replaced(tmp_path) -> None:
    path = Layout(tmp_path).batch_manifest
    followed = FollowedManifest(tmp_path)
    assert followed.read() == {} and followed.boundary is None
    replace_json(path, manifest([FIRST], FIRST + timedelta(days=1)))
    assert followed.read() is not None and followed.boundary == datetime(2026, 11, 21)
    # An edit that keeps the inode, the size and the modification time goes unseen: nothing was parsed.
    seen = path.stat()
    path.write_text(path.read_text().replace("2026-11-21T00", "2026-11-22T00"))
    os.utime(path, ns=(seen.st_atime_ns, seen.st_mtime_ns))
    assert followed.read() is not None and followed.boundary == datetime(2026, 11, 21)
    replace_json(path, manifest([FIRST, FIRST + timedelta(days=1)], FIRST + timedelta(days=2)))  # publishing renames
    assert followed.read() is not None and followed.boundary == datetime(2026, 11, 22)
