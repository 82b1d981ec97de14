"""5. Backfill: days rebuilt through Airflow vs the same dbt builds run directly.

The days are written once into a raw store that two data directories share
(by symbolic links): one for the direct builds, one for Airflow. *Direct* is
one process that builds and publishes each day in turn, exactly as the DAG's
build task does (`lambdaflow.batch.build.build_day`). *Airflow* is `airflow
backfill create` for the same days, with an API server, a DAG processor and a
scheduler already up and idle in lambdaflow's Airflow home (as `make up` runs
them); it is timed from the command's start until the last backfill run has
succeeded, as seen through Airflow's REST API. The
difference is what the scheduler adds: the completeness sensor, a task process
per task (each importing Airflow, and the build task dbt), and the
scheduling between them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from bench import plots
from bench.batch_build import dbt_env
from bench.core import Context, Row, Section
from bench.history import DirectBuilds, build_directly, past_days, write_history
from bench.procs import bench_child, bench_command, run
from lambdaflow.batch import airflow_home
from lambdaflow.core.config import Settings
from lambdaflow.core.files import read_json
from lambdaflow.kafka.broker import HOST, free_port, port_answers
from lambdaflow.ops.airflow_api import healthy, http_json, logged_in
from lambdaflow.ops.processes import Child, tail

log = logging.getLogger("lambdaflow.bench")

READY_SECONDS = 600
CREATE_ATTEMPTS = 5
DAG_ID = "lambda_batch"


def run_section(ctx: Context) -> Section:
    days = past_days(ctx.sizes.backfill_days)
    shared = ctx.folder("backfill", "raw")
    log.info("backfill: writing %d days of %d events", len(days), ctx.sizes.backfill_events_per_day)
    write_history(shared, days, ctx.sizes.backfill_events_per_day)
    direct_dir, airflow_dir = (_sharing(ctx.folder("backfill", name), shared) for name in ("direct", "airflow"))
    log.info("backfill: building %d days directly in one process", len(days))
    direct = build_directly(ctx, direct_dir, days, "backfill-direct")
    log.info("backfill: %d days directly in %.1f s; now through Airflow", len(days), direct.wall_seconds)
    through_airflow = _through_airflow(ctx, airflow_dir, days)
    same = _same_days(direct_dir, airflow_dir, days)
    section = _summarize(ctx, days, direct, through_airflow, same)
    section.details["direct_data_dir"] = str(direct_dir)
    return section


def _sharing(data_dir: Path, shared: Path) -> Path:
    """A data directory whose raw store and archiver manifests are the shared ones."""
    for name in ("raw", "archiver"):
        link = data_dir / name
        if not link.exists():
            link.symlink_to(shared / name, target_is_directory=True)
    return data_dir


@contextmanager
def _without_airflow_settings() -> Iterator[None]:
    """Hide the caller's AIRFLOW* variables for a moment: lambdaflow's Airflow home lets them win over
    its defaults, and the benchmark must never touch an Airflow the shell points at."""
    saved = {key: os.environ.pop(key) for key in [k for k in os.environ if k.startswith("AIRFLOW")]}
    try:
        yield
    finally:
        os.environ.update(saved)


def _airflow_env(ctx: Context, data_dir: Path, port: int) -> dict[str, str]:
    """The environment `make up` gives Airflow's components (lambdaflow's Airflow home), for this data
    directory and port. Airflow 3 tasks report to the API server, so the scheduler must know its URL."""
    today = datetime.now(UTC).date()
    base = {
        **dbt_env(ctx, data_dir, "backfill-airflow"),
        # No catchup: the scheduler runs only what the backfill asks for.
        "LAMBDAFLOW_BATCH_START_DATE": today.isoformat(),
    }
    with _without_airflow_settings():
        defaults = airflow_home.airflow_env(Settings.from_env(base))
    return {
        **base,
        **defaults,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", os.defpath)]),
    }


def _start_airflow(env: dict[str, str], logs: Path, port: int) -> list[Child]:
    """The API server, then (once it listens, so that no task is queued before it can report) the DAG
    processor and the scheduler: what `airflow standalone` runs, less the triggerer (no task defers) and
    the log servers (they would listen beyond 127.0.0.1)."""
    components = [bench_child("airflow-api-server", [sys.executable, "-m", "airflow", "api-server"], env, logs).start()]
    deadline = time.monotonic() + READY_SECONDS
    while not port_answers(HOST, port):
        if not components[0].running() or time.monotonic() > deadline:
            raise RuntimeError(f"the Airflow API server did not start:\n{tail(components[0].log_path)}")
        time.sleep(0.5)
    for name, args in (("dag-processor", ["dag-processor"]), ("scheduler", ["scheduler", "--skip-serve-logs"])):
        components.append(bench_child(f"airflow-{name}", [sys.executable, "-m", "airflow", *args], env, logs).start())
    return components


def _through_airflow(ctx: Context, data_dir: Path, days: list[date]) -> dict:
    port = free_port()
    env = _airflow_env(ctx, data_dir, port)
    logs = ctx.folder("backfill", "logs")
    prepared = run("airflow-prepare", bench_command("prepare-airflow"), env, logs, timeout=900)
    base = f"http://{HOST}:{port}"
    components: list[Child] = []
    try:
        started = time.monotonic()
        components = _start_airflow(env, logs, port)
        token = _wait_until_ready(base, Path(env["AIRFLOW_HOME"]), components)
        ready = time.monotonic() - started
        log.info("backfill: Airflow is up (%.0f s); creating the backfill of %d days", ready, len(days))
        began, began_at = time.monotonic(), datetime.now(UTC)
        created, attempts = _create_backfill(env, logs, days, base, token, scheduler=components[-1])
        runs = _wait_for_runs(base, token, len(days), components, began_at)
        seconds = time.monotonic() - began
    finally:
        for component in reversed(components):
            component.stop(grace=60)
    return {
        "seconds": round(seconds, 3),
        "create_seconds": round(created, 3),
        "create_attempts": attempts,
        "prepare_seconds": round(prepared.wall_seconds, 3),
        "startup_seconds": round(ready, 1),
        "runs": runs,
    }


def _create_backfill(
    env: dict, logs: Path, days: list[date], base: str, token: str, scheduler: Child
) -> tuple[float, int]:
    """`airflow backfill create`, with the scheduler paused meanwhile; tried again when SQLite was locked
    and nothing was created. Returns the seconds all attempts took and how many there were.

    SQLite takes one writer at a time: with the scheduler writing, the command
    failed with "database is locked", and once the scheduler itself exited on
    it. Until the backfill exists the scheduler has nothing of it to do, so
    pausing it (SIGSTOP) costs the measurement nothing. A scheduler paused in
    the middle of a write keeps the lock, though, so it runs between attempts
    and finishes that write.
    """
    args = [
        str(Path(sys.executable).parent / "airflow"),
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        days[0].isoformat(),
        "--to-date",
        days[-1].isoformat(),
        "--reprocess-behavior",
        "completed",
    ]
    started = time.monotonic()
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        name = f"airflow-backfill-create-{attempt}"
        scheduler.signal_group(signal.SIGSTOP)
        try:
            done = bench_child(name, args, env, logs).start().wait(600)
        finally:
            scheduler.signal_group(signal.SIGCONT)
        if done.returncode == 0:
            return time.monotonic() - started, attempt
        status, body = http_json("GET", f"{base}/api/v2/backfills?dag_id={DAG_ID}", token=token)
        locked = "database is locked" in tail(logs / f"{name}.log", 5)
        if not locked or status != 200 or body.get("total_entries"):
            break
        log.warning("backfill: `airflow backfill create` found SQLite locked; trying again")
        time.sleep(2.0)  # the scheduler runs meanwhile
    raise RuntimeError(f"airflow backfill create failed:\n{tail(logs / f'{name}.log')}")


def _wait_until_ready(base: str, home: Path, components: list[Child]) -> str:
    """Healthy scheduler and DAG processor, a login, and lambda_batch parsed and unpaused; returns a token."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        _require_running(components, "while starting")
        try:
            token = _ready_now(base, home)
        except OSError:  # not listening yet, or too busy to answer in time
            token = None
        if token:
            return token
        time.sleep(1.0)
    raise TimeoutError(f"Airflow was not ready in {READY_SECONDS} s; see {home}")


def _require_running(components: list[Child], when: str) -> None:
    for component in components:
        if not component.running():
            raise RuntimeError(f"{component.name} stopped {when}:\n{tail(component.log_path)}")


def _ready_now(base: str, home: Path) -> str | None:
    if not healthy(base, ("metadatabase", "scheduler", "dag_processor")):
        return None
    login = logged_in(base, home)
    if login is None:
        return None
    token = login[2]
    status, dag = http_json("GET", f"{base}/api/v2/dags/{DAG_ID}", token=token)
    if status != 200 or not isinstance(dag, dict):
        return None
    if dag.get("is_paused"):
        http_json("PATCH", f"{base}/api/v2/dags/{DAG_ID}", {"is_paused": False}, token=token)
        return None
    return token


def _wait_for_runs(
    base: str, token: str, expected: int, components: list[Child], began_at: datetime, timeout: float = 7200
) -> list[dict]:
    """Every backfill run once all have succeeded, with the seconds after ``began_at`` at which it ended;
    fails at once when one fails."""
    deadline = time.monotonic() + timeout
    url = f"{base}/api/v2/dags/{DAG_ID}/dagRuns?run_type=backfill&limit=1000"
    while time.monotonic() < deadline:
        _require_running(components, "during the backfill")
        status, body = http_json("GET", url, token=token)
        runs = body.get("dag_runs", []) if status == 200 else []
        failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
        if failed:
            raise RuntimeError(f"backfill runs failed: {failed}; see the Airflow logs")
        if len(runs) >= expected and all(r["state"] == "success" for r in runs):
            return [
                {
                    "day": r["data_interval_start"][:10],
                    "start": r["start_date"],
                    "end": r["end_date"],
                    "seconds": _between(r["start_date"], r["end_date"]),
                    "done_after": _between(began_at.isoformat(), r["end_date"]),
                }
                for r in runs
            ]
        time.sleep(1.0)
    raise TimeoutError(f"the backfill did not finish in {timeout:.0f} s")


def _between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)


def _same_days(direct_dir: Path, airflow_dir: Path, days: list[date]) -> bool:
    """Did both ways publish the same hours for every day?"""

    def published(data_dir: Path) -> dict[str, Path]:
        manifest = read_json(data_dir / "batch" / "manifest.json") or {}
        return {day: data_dir / entry["file"] for day, entry in manifest.get("days", {}).items()}

    first, second = published(direct_dir), published(airflow_dir)
    with duckdb.connect() as con:
        for day in days:
            key = day.isoformat()
            if key not in first or key not in second:
                return False
            query = "select count(*), sum(events), sum(active_users), sum(revenue_cents) from read_parquet(?)"
            if con.execute(query, [str(first[key])]).fetchall() != con.execute(query, [str(second[key])]).fetchall():
                return False
    return True


def _pace(direct: DirectBuilds, airflow: dict) -> dict[str, list[float]]:
    """Seconds after each way began at which its 1st, 2nd, ... day was published."""
    setup = direct.wall_seconds - sum(d["seconds"] for d in direct.days)  # the process's start and dbt's import
    done, direct_times = setup, []
    for day in direct.days:
        done += day["seconds"]
        direct_times.append(round(done, 1))
    return {
        "directly, one process": direct_times,
        "through Airflow": sorted(r["done_after"] for r in airflow["runs"] if r["done_after"] is not None),
    }


def _summarize(ctx: Context, days: list[date], direct: DirectBuilds, airflow: dict, same: bool) -> Section:
    overhead = airflow["seconds"] / direct.wall_seconds
    row = Row(
        id="backfill.overhead",
        what=f"backfill: {len(days)} days through Airflow",
        figure=airflow["seconds"],
        unit="s",
        peer=f"the same {len(days)} dbt builds directly, one process",
        peer_figure=direct.wall_seconds,
        ratio=round(overhead, 3),
        target=None,
        met=None,
        why="" if same else "the two ways did not publish the same hours",
        detail={
            "per_day_airflow_s": round(airflow["seconds"] / len(days), 2),
            "per_day_direct_s": round(direct.wall_seconds / len(days), 2),
            "same_tables": same,
            "airflow_startup_s": airflow["startup_seconds"],
            "repetitions": 1,
        },
    )
    pace = _pace(direct, airflow)
    details = {"direct": direct.__dict__, "airflow": airflow, "same_tables": same, "pace": pace}
    text = _text(days, direct, airflow, overhead, same, ctx.sizes.backfill_events_per_day, pace)
    return Section(
        5,
        "Backfill",
        [row],
        text,
        details,
        plots=[
            lambda out: plots.lines(
                out / "backfill_pace.png",
                "Backfill: days published over time",
                {way: (times, list(range(1, len(times) + 1))) for way, times in pace.items()},
                "seconds since the start",
                "days published",
            ),
        ],
    )


def _text(
    days: list[date],
    direct: DirectBuilds,
    airflow: dict,
    overhead: float,
    same: bool,
    events_per_day: int,
    pace: dict[str, list[float]],
) -> str:
    count = len(days)
    first = {way: times[0] for way, times in pace.items() if times}
    return "\n".join(
        [
            f"{count} days ({days[0]} to {days[-1]}) of {events_per_day:,} synthetic events each, rebuilt both ways, "
            "once: one pass through Airflow costs as much as the rest of the benchmark, so it is not repeated. "
            "Directly first (Airflow not running), then through Airflow.",
            "",
            "| way | total s | per day s |",
            "|---|---:|---:|",
            f"| directly, one process (`dbt build` and export per day) | {direct.wall_seconds:.1f} | "
            f"{direct.wall_seconds / count:.1f} |",
            f"| `airflow backfill create` to the last run's success | {airflow['seconds']:.1f} | "
            f"{airflow['seconds'] / count:.1f} |",
            "",
            f"Overhead ratio {overhead:.2f}. Not counted: preparing the Airflow database "
            f"({airflow['prepare_seconds']:.0f} s) and starting its components until healthy "
            f"({airflow['startup_seconds']:.0f} s), which a running deployment has done already. Counted: the "
            f"`airflow backfill create` command itself ({airflow['create_seconds']:.1f} s, "
            f"{airflow['create_attempts']} attempt(s)). Airflow's database here is SQLite, which takes one writer "
            'at a time: with the scheduler running, the command failed with "database is locked", and once the '
            "scheduler itself exited on it, so the scheduler is paused (SIGSTOP) while the command runs; it has "
            "nothing of the backfill to do before it exists. The backfill starts several runs at once and the "
            "one-slot `warehouse` pool queues their tasks, so a run's own start-to-end time says little; the plot "
            "shows the pace at which days were published (the first after "
            f"{first.get('through Airflow', 0):.0f} s through Airflow, "
            f"after {first.get('directly, one process', 0):.0f} s "
            "directly). Through Airflow each day costs two task processes (the completeness sensor and the build, "
            "each starting Airflow's task runner, the build also importing dbt) and the scheduler's turns between "
            "them; directly, one process imports dbt once. In both, dbt reports that it cannot parse partially "
            "because the vars change per day, so every build parses the project again. "
            f"Both ways published {'the same' if same else 'DIFFERENT'} hours for every day.",
        ]
    )
