"""`lambdaflow reconcile --date D`: the batch layer's numbers beside the speed layer's.

Both sides are read from published files (the batch manifest's file for D, the
speed layer's snapshots), per metric and UTC hour. The speed layer keeps a day
until it is a day behind the serving boundary, so reconcile a day soon after
it is built.
"""

from __future__ import annotations

from datetime import date

import duckdb

from stream_worker.boundary import manifest_path
from stream_worker.config import Settings
from stream_worker.errors import LambdaflowError
from stream_worker.files import read_json
from stream_worker.metrics import names


def reconcile(settings: Settings, day: date) -> list[dict]:
    """One row per metric: batch and speed totals for the day, their difference, and the hours that differ."""
    entry = (read_json(manifest_path(settings.data_dir)) or {}).get("days", {}).get(day.isoformat())
    if entry is None:
        raise LambdaflowError(f"{day} has not been built by the batch layer yet: run `lambdaflow batch --date {day}`")
    snapshots = sorted((settings.data_dir / "speed" / settings.topic / "snapshots").glob("partition-*.parquet"))
    metrics = names()
    sums = ", ".join(f"sum({m})::bigint as {m}" for m in metrics)
    with duckdb.connect() as con:
        batch = _by_hour(con.execute(
            f"select hour, {sums} from read_parquet(?) group by hour", [str(settings.data_dir / entry["file"])]
        ).fetchall())
        speed = _by_hour(con.execute(
            f"select hour, {sums} from read_parquet(?) where event_date = ? group by hour",
            [[str(p) for p in snapshots], day],
        ).fetchall()) if snapshots else {}
    rows = []
    for index, metric in enumerate(metrics):
        hours = sorted(set(batch) | set(speed))
        differing = [h for h in hours if batch.get(h, [0] * len(metrics))[index] != speed.get(h, [0] * len(metrics))[index]]
        batch_total = sum(values[index] for values in batch.values())
        speed_total = sum(values[index] for values in speed.values())
        rows.append({
            "event_date": day.isoformat(),
            "metric": metric,
            "batch": batch_total,
            "speed": speed_total,
            "difference": speed_total - batch_total,
            "hours_differing": differing,
        })
    return rows


def _by_hour(rows: list[tuple]) -> dict[int, list[int]]:
    return {hour: list(values) for hour, *values in rows}
