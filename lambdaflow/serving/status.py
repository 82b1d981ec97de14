"""`lambdaflow status`: where every layer stands, from the files each one publishes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.late import late_days
from lambdaflow.core.raw_store import RawStore

LAYERS = ("archiver", "stream")


def seconds_of(stamp: str | None) -> float | None:
    """An ISO-8601 instant as Unix seconds; None stays None."""
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


@dataclass(frozen=True)
class WorkerFigures:
    """What one worker's status file says about how it is doing, derived in one place for
    `/metrics`, `/api/workers` and `/healthz`. None where the file does not say."""

    lag: int | None
    status_age: float | None
    """Seconds since the worker last wrote its status."""
    last_commit: float | None
    """When it last committed (Unix seconds)."""
    commit_delay: float | None
    """That commit's time less its last record's Kafka timestamp."""

    @classmethod
    def of(cls, document: dict, now: float) -> WorkerFigures:
        offset, end = document.get("next_offset"), document.get("end_offset")
        counters = document.get("counters") or {}
        updated = seconds_of(document.get("updated_at"))
        committed = seconds_of(counters.get("last_commit_at"))
        record = seconds_of(counters.get("last_record_timestamp"))
        return cls(
            lag=max(0, end - offset) if offset is not None and end is not None else None,
            status_age=max(0.0, now - updated) if updated is not None else None,
            last_commit=committed,
            commit_delay=max(0.0, committed - record) if committed is not None and record is not None else None,
        )


def worker_statuses(settings: Settings) -> dict[int, dict[str, dict]]:
    """Per partition, the status file each worker last wrote for it ({} where none has), by layer."""
    store = RawStore(settings.data_dir, settings.topic, settings.storage)
    speed = settings.speed_files
    return {
        partition: {
            "archiver": archived or {},
            "stream": speed.read_status(partition) or {},
        }
        for partition, archived in store.statuses(fallback=settings.partitions).items()
    }


def status(settings: Settings) -> dict:
    store = RawStore(settings.data_dir, settings.topic, settings.storage)
    partitions = []
    for partition, documents in worker_statuses(settings).items():
        partitions.append(
            {
                "partition": partition,
                "archiver": _progress(documents["archiver"], "watermark", "caught_up_at", "epoch"),
                "stream": _progress(documents["stream"], "epoch", "updated_at"),
            }
        )
    manifest = read_manifest(settings.documents)
    days = manifest.get("days", {})
    last_built = max(days.items(), key=lambda item: item[1].get("built_at") or "", default=None)
    return {
        "topic": settings.topic,
        "boundary": manifest.get("boundary"),
        "last_build": {"event_date": last_built[0], **last_built[1]} if last_built else None,
        "days_built": len(days),
        "late_days": {day.isoformat(): files for day, files in late_days(settings).items()},
        "partitions": partitions,
        "dead_letter": _dead_letter(store),
    }


def _progress(document: dict, *fields: str) -> dict | None:
    if not document:
        return None
    end, next_offset = document.get("end_offset"), document.get("next_offset")
    return {
        "next_offset": next_offset,
        "end_offset": end,
        "lag": end - next_offset if end is not None and next_offset is not None else None,
        **{field: document.get(field) for field in fields},
    }


def _dead_letter(store: RawStore) -> dict:
    snapshot = store.snapshot()
    files = snapshot.dead_letter_files()
    if not files:
        return {"messages": 0, "by_reason": {}}
    try:  # the file names are bound as a parameter, never spliced into the SQL
        with store.storage.duckdb() as con:
            rows = con.execute(
                f"select reason, count(*) from read_parquet(?) where {snapshot.dead_letter_counted()} "
                "group by reason order by reason",
                [files],
            ).fetchall()
    except duckdb.Error as error:
        raise LambdaflowError(
            f"the dead letter {store.tables.dead_letter_uri} cannot be read: {' '.join(str(error).split())[:300]}"
        ) from None
    return {"messages": sum(n for _, n in rows), "by_reason": dict(rows)}


def partition_rows(report: dict) -> list[dict]:
    """The per-partition part, flat, for a table."""
    rows = []
    for entry in report["partitions"]:
        archiver, stream = entry["archiver"] or {}, entry["stream"] or {}
        rows.append(
            {
                "partition": entry["partition"],
                "archived_to": archiver.get("next_offset"),
                "archive_lag": archiver.get("lag"),
                "watermark": archiver.get("watermark"),
                "counted_to": stream.get("next_offset"),
                "stream_lag": stream.get("lag"),
            }
        )
    return rows
