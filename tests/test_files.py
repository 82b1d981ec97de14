"""Crash-safe publishing: a new folder is as durable as the file in it, before a manifest names it."""

from __future__ import annotations

import os

from lambdaflow.core import files


def fsynced_dirs(monkeypatch) -> list[str]:
    """The directories fsynced from now on, in order."""
    synced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(path):
            synced.append(path)
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return synced


def test_a_file_published_into_new_folders_makes_each_folder_durable(tmp_path, monkeypatch) -> None:
    """`raw/events/event_date=D/` is new on the first batch of a day: its entry in `raw/events/` must be
    fsynced too, or a crash may keep the archiver's manifest and lose the folder it covers."""
    synced = fsynced_dirs(monkeypatch)
    temp = tmp_path / "tmp" / "t.parquet.tmp"
    temp.parent.mkdir()
    temp.write_bytes(b"x")
    final = tmp_path / "raw" / "events" / "event_date=2026-11-26" / "events-0-0-0-9.parquet"
    files.publish_new(temp, final)
    assert synced == [str(tmp_path), str(tmp_path / "raw"), str(tmp_path / "raw" / "events"), str(final.parent)]


def test_a_replacing_publish_and_a_json_replace_make_their_names_durable(tmp_path, monkeypatch) -> None:
    synced = fsynced_dirs(monkeypatch)
    temp = tmp_path / "t.tmp"
    temp.write_bytes(b"x")
    final = tmp_path / "batch" / "published" / "event_date=2026-11-26" / "hourly-1.parquet"
    files.publish_replacing(temp, final)
    assert final.read_bytes() == b"x"
    assert synced[-1] == str(final.parent) and str(final.parent.parent) in synced
    synced.clear()
    files.replace_json(tmp_path / "state" / "new" / "status.json", {"a": 1})
    assert str(tmp_path / "state") in synced and synced[-1] == str(tmp_path / "state" / "new")


def test_a_progress_file_is_replaced_whole_without_an_fsync(tmp_path, monkeypatch) -> None:
    """The stream worker's status, written every second from the counting path: atomic, never fsynced."""
    target = tmp_path / "speed" / "status-0.json"
    files.replace_json(target, {"next_offset": 1})  # durable: makes the folders and syncs them
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    files.replace_json(target, {"next_offset": 2}, durable=False)
    assert synced == []
    assert files.read_json(target) == {"next_offset": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["status-0.json"]  # no temporary file left
