"""Which days the speed layer may drop: only what the batch serves whole and has reconciled."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from lambdaflow.core.documents import Documents
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.files import replace_json
from lambdaflow.core.layout import BATCH_MANIFEST, reconcile_report_name
from lambdaflow.core.storage import Storage
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


@pytest.fixture
def documents(tmp_path, storage: Storage) -> Documents:
    return Documents(tmp_path, storage)


def report(documents: Documents, day: date, unexplained: int, threshold: int = 0) -> list[dict]:
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
    documents.write(reconcile_report_name(day), rows)
    return rows


def damage(documents: Documents, name: str) -> None:
    """Replace the document ``name`` with bytes that are not JSON, as a disk or a person might."""
    if documents.storage.is_s3:
        documents.storage.filesystem().pipe_file(documents.where(name), b"{not json")
    else:
        Path(documents.where(name)).write_text("{not json")


def test_a_failed_reconciliation_keeps_its_day_in_the_speed_layer(documents) -> None:
    """The report is written before the threshold check fails the task; a day whose report only exists
    was dropped all the same, and the difference could never be looked into again."""
    days = [FIRST + timedelta(days=n) for n in range(5)]
    built = manifest(days, boundary=days[-1] + timedelta(days=1))
    report(documents, days[0], 0)
    failed = report(documents, days[1], 7)
    with pytest.raises(LambdaflowError, match="events by \\+7"):
        require_within_threshold(failed, 0)
    assert first_day_kept(documents, built, days[0], GRACE) == days[1]
    # Once the day passes (rebuilt, reconciled again), the days after it go too, up to the grace.
    report(documents, days[1], 0)
    for day in days[2:4]:
        report(documents, day, 2, threshold=5)  # within a threshold of 5: passed
    assert first_day_kept(documents, built, days[0], GRACE) == days[4]


def test_a_day_not_built_is_never_dropped(documents) -> None:
    days = [FIRST + timedelta(days=n) for n in range(5)]
    for day in days:
        report(documents, day, 0)
    built = manifest([d for d in days if d != days[2]], boundary=days[-1] + timedelta(days=1))
    assert first_day_kept(documents, built, days[0], GRACE) == days[2]
    assert first_day_kept(documents, {}, days[0], GRACE) is None  # nothing built: keep all


def test_a_damaged_report_counts_as_not_reconciled(documents) -> None:
    days = [FIRST + timedelta(days=n) for n in range(3)]
    report(documents, days[0], 0)
    damage(documents, reconcile_report_name(days[1]))
    built = manifest(days, boundary=days[-1] + timedelta(days=1))
    assert first_day_kept(documents, built, days[0], GRACE) == days[1]


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


def test_the_followed_manifest_is_parsed_again_only_once_replaced(documents) -> None:
    followed = FollowedManifest(documents)
    assert followed.read() == {} and followed.boundary is None
    documents.write(BATCH_MANIFEST, manifest([FIRST], FIRST + timedelta(days=1)))
    assert followed.read() is not None and followed.boundary == datetime(2026, 11, 21)
    documents.write(BATCH_MANIFEST, manifest([FIRST, FIRST + timedelta(days=1)], FIRST + timedelta(days=2)))
    assert followed.read() is not None and followed.boundary == datetime(2026, 11, 22)
    if documents.storage.is_s3:
        return
    path = Path(documents.where(BATCH_MANIFEST))
    # An edit that keeps the inode, the size and the modification time goes unseen: nothing was parsed.
    seen = path.stat()
    path.write_text(path.read_text().replace("2026-11-22T00", "2026-11-23T00"))
    os.utime(path, ns=(seen.st_atime_ns, seen.st_mtime_ns))
    assert followed.read() is not None and followed.boundary == datetime(2026, 11, 22)
    replace_json(path, manifest([FIRST], FIRST + timedelta(days=3)))  # publishing renames
    assert followed.read() is not None and followed.boundary == datetime(2026, 11, 23)
