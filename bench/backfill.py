"""5. Backfill: a range of days rebuilt through Airflow vs the same range build run directly.

The days are written once into a raw store that two data directories share
(by symbolic links): one for the direct builds, one for Airflow. *Direct* is
one process that builds the whole range in one `dbt build` and publishes each
day (`lambdaflow.batch.build.build_days`, what `lambdaflow batch --from --to`
and the DAG's build task run). *Airflow* is a run of `lambda_batch_range` for
the same days, triggered through Airflow's REST API as the UI's trigger form
does, timed from the trigger until the run has succeeded, as seen through the
same API. An API server, a DAG processor and a scheduler are up and idle in
lambdaflow's Airflow home (as `make up` runs them) for the whole section, and
the two ways alternate, repeatedly, so that both see the same machine. The
difference is what the scheduler adds: the completeness sensor, the per-day
reconciliation, a task process per task (each importing Airflow, the build
task dbt), and the scheduling between them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import quote

import duckdb

from bench import plots
from bench.batch_build import dbt_env
from bench.core import Context, Row, Section, alternate, median
from bench.history import DirectBuilds, build_range_directly, past_days, write_history
from bench.procs import bench_child, bench_command, run
from lambdaflow.batch import airflow_home
from lambdaflow.core.config import Settings
from lambdaflow.core.files import read_json
from lambdaflow.kafka.broker import HOST, free_port, port_answers
from lambdaflow.ops.airflow_api import healthy, http_json, logged_in
from lambdaflow.ops.processes import Child, tail

log = logging.getLogger("lambdaflow.bench")

READY_SECONDS = 600
DAG_ID = "lambda_batch_range"
TARGET = 1.5
"""The issue's target: a backfill through Airflow takes at most this many times the direct range build."""


def run_section(ctx: Context) -> Section:
    days = past_days(ctx.sizes.backfill_days)
    shared = ctx.folder("backfill", "raw")
    log.info("backfill: writing %d days of %d events", len(days), ctx.sizes.backfill_events_per_day)
    write_history(shared, days, ctx.sizes.backfill_events_per_day)
    direct_dir, airflow_dir = (_sharing(ctx.folder("backfill", name), shared) for name in ("direct", "airflow"))
    directs: list[DirectBuilds] = []
    runs: list[dict] = []
    with _airflow_up(ctx, airflow_dir) as airflow:
        for repetition in range(ctx.sizes.repetitions):
            for way in alternate(("direct", "airflow"), repetition):
                if way == "direct":
                    directs.append(build_range_directly(ctx, direct_dir, days, f"backfill-direct-{repetition + 1}"))
                    log.info("backfill: %d days directly in %.1f s", len(days), directs[-1].wall_seconds)
                else:
                    runs.append(airflow.run(days))
                    log.info("backfill: %d days through Airflow in %.1f s", len(days), runs[-1]["seconds"])
    same = _same_days(direct_dir, airflow_dir, days)
    section = _summarize(ctx, days, directs, runs, airflow, same)
    section.details["direct_data_dir"] = str(direct_dir)
    return section


def _sharing(data_dir: Path, shared: Path) -> Path:
    """A data directory whose raw tables and archiver status files are the shared ones."""
    for name in ("tables", "archiver"):
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


@dataclass
class AirflowUp:
    """Airflow's components, up and idle in lambdaflow's Airflow home, and the runs made through them."""

    base: str
    token: str
    components: list[Child]
    prepare_seconds: float
    startup_seconds: float

    def run(self, days: list[date]) -> dict:
        """One run of the range DAG for ``days``, timed from the trigger to its success."""
        began = time.monotonic()
        run_id = _trigger(self.base, self.token, days)
        triggered = time.monotonic() - began
        tasks = _wait_for_run(self.base, self.token, run_id, self.components)
        seconds = time.monotonic() - began
        return {"seconds": round(seconds, 3), "trigger_seconds": round(triggered, 3), "run_id": run_id, "tasks": tasks}


@contextmanager
def _airflow_up(ctx: Context, data_dir: Path) -> Iterator[AirflowUp]:
    """Airflow's database prepared and its components started (neither is timed), stopped by PID after."""
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
        log.info("backfill: Airflow is up (%.0f s)", ready)
        yield AirflowUp(base, token, components, round(prepared.wall_seconds, 3), round(ready, 1))
    finally:
        for component in reversed(components):
            component.stop(grace=60)


def _trigger(base: str, token: str, days: list[date]) -> str:
    """One run of the range DAG for ``days``, without a logical date, as the UI's trigger form sends it."""
    conf = {"from": days[0].isoformat(), "to": days[-1].isoformat()}
    status, body = http_json(
        "POST", f"{base}/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf}, token=token
    )
    if status not in (200, 201) or not isinstance(body, dict):
        raise RuntimeError(f"triggering {DAG_ID} failed: HTTP {status}: {str(body)[:500]}")
    return body["dag_run_id"]


def _wait_for_run(base: str, token: str, run_id: str, components: list[Child], timeout: float = 7200) -> list[dict]:
    """Wait for the run's success (fail at once when it fails); returns its tasks' states and seconds."""
    deadline = time.monotonic() + timeout
    url = f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
    while time.monotonic() < deadline:
        _require_running(components, "during the backfill")
        status, body = http_json("GET", url, token=token)
        state = body.get("state") if status == 200 and isinstance(body, dict) else None
        if state == "failed":
            raise RuntimeError(f"the {DAG_ID} run {run_id} failed; see the Airflow logs")
        if state == "success":
            status, listed = http_json("GET", f"{url}/taskInstances", token=token)
            instances = listed.get("task_instances", []) if status == 200 and isinstance(listed, dict) else []
            return [
                {"task": ti["task_id"], "state": ti["state"], "seconds": ti.get("duration")}
                for ti in sorted(instances, key=lambda ti: ti.get("start_date") or "")
            ]
        time.sleep(0.25)
    raise TimeoutError(f"the {DAG_ID} run did not finish in {timeout:.0f} s")


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


def _summarize(
    ctx: Context, days: list[date], directs: list[DirectBuilds], runs: list[dict], airflow: AirflowUp, same: bool
) -> Section:
    """Medians of the repetitions, which alternate the two ways with Airflow up and idle throughout, so
    that both see the same machine (a shared one's load drifts)."""
    direct = median(d.wall_seconds for d in directs)
    through = median(r["seconds"] for r in runs)
    overhead = through / direct
    met = same and overhead <= TARGET
    why = ""
    if not same:
        why = "the two ways did not publish the same hours"
    elif not met:
        why = f"Airflow took {overhead:.2f}x the direct range build, more than {TARGET}x"
    row = Row(
        id="backfill.overhead",
        what=f"backfill: {len(days)} days through Airflow ({DAG_ID})",
        figure=round(through, 3),
        unit="s",
        peer=f"the same {len(days)} days as one range build directly, one process",
        peer_figure=round(direct, 3),
        ratio=round(overhead, 3),
        target=f"<= {TARGET}x",
        met=met,
        why=why,
        detail={
            "per_day_airflow_s": round(through / len(days), 2),
            "per_day_direct_s": round(direct / len(days), 2),
            "airflow_runs_s": [r["seconds"] for r in runs],
            "direct_runs_s": [d.wall_seconds for d in directs],
            "same_tables": same,
            "airflow_startup_s": airflow.startup_seconds,
            "repetitions": len(runs),
        },
    )
    details = {
        "direct": [d.__dict__ for d in directs],
        "airflow": {
            "runs": runs,
            "prepare_seconds": airflow.prepare_seconds,
            "startup_seconds": airflow.startup_seconds,
        },
        "same_tables": same,
    }
    text = _text(days, directs, runs, airflow, overhead, same, ctx.sizes.backfill_events_per_day)

    def plot(out: Path) -> Path:
        return plots.bars(
            out / "backfill.png",
            f"Backfill of {len(days)} days: one range build directly vs {DAG_ID} through Airflow",
            ["directly, one process", DAG_ID],
            [direct, through],
            [[d.wall_seconds for d in directs], [r["seconds"] for r in runs]],
            "seconds",
            reference=(direct * TARGET, f"target: {TARGET}x the direct build"),
        )

    return Section(5, "Backfill", [row], text, details, plots=[plot])


def _text(
    days: list[date],
    directs: list[DirectBuilds],
    runs: list[dict],
    airflow: AirflowUp,
    overhead: float,
    same: bool,
    events_per_day: int,
) -> str:
    count = len(days)
    rows = [
        f"| {n} | {d.wall_seconds:.1f} | {r['seconds']:.1f} | "
        + ", ".join(f"{t['task']} {t['seconds'] or 0:.1f}" for t in r["tasks"])
        + " |"
        for n, (d, r) in enumerate(zip(directs, runs, strict=False), start=1)
    ]
    return "\n".join(
        [
            f"{count} days ({days[0]} to {days[-1]}) of {events_per_day:,} synthetic events each, rebuilt "
            f"{len(runs)} time(s) each way, the two ways alternating, with Airflow's API server, DAG processor and "
            "scheduler up and idle throughout, so that both ways see the same machine. *Directly*: one process, "
            "one range build (`dbt build` for all the days, one export, each day published). *Through Airflow*: "
            f"`{DAG_ID}` triggered for the range through the REST API, timed to the run's success. Each way "
            "rebuilds into a data directory of its own (the first repetition builds, the others rebuild).",
            "",
            "| repetition | directly s | through Airflow s | its tasks, s |",
            "|---|---:|---:|---|",
            *rows,
            "",
            f"Overhead ratio {overhead:.2f}, median to median (target <= {TARGET}). Not counted: preparing the "
            f"Airflow database ({airflow.prepare_seconds:.0f} s) and starting its components until healthy "
            f"({airflow.startup_seconds:.0f} s), which a running deployment has done already. Counted: the trigger, "
            "the scheduler's turns and the run's three task processes; the run also reconciles each day with the "
            "speed layer, which the direct build does not. Both ways start a process that imports dbt once and "
            "parse the project once for the build and once for the export. "
            f"Both ways published {'the same' if same else 'DIFFERENT'} hours for every day.",
        ]
    )
