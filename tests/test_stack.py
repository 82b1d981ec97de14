"""`make up` / `make down`: the whole stack, on a temporary data directory and free ports.

One long test: bringing Airflow up costs a minute or more on two cores, so
every check runs against the same stack. The fixture runs `down` whatever
happens, so a failing test leaves no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from lambdaflow.core.config import Settings
from lambdaflow.core.raw_store import RawStore
from lambdaflow.kafka.broker import free_port
from lambdaflow.ops.airflow_api import airflow_token, http_json
from lambdaflow.ops.procfs import proc_stat, running_processes
from lambdaflow.ops.stack.config import StackConfig, airflow_service_env
from lambdaflow.ops.stack.down import down
from tests.worker_helpers import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stack reads /proc")

EVENTS_PER_DAY = 2000


@dataclass
class Stack:
    env: dict[str, str]
    data_dir: Path
    report: dict

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def lambdaflow(self, *args: str) -> dict | list:
        done = self.run("-m", "lambdaflow", *args)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        return rows[0] if len(rows) == 1 else rows

    @property
    def recorded(self) -> list[dict]:
        return json.loads((self.data_dir / "run" / "stack.json").read_text())["services"]


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """A stack of its own; `down` runs after the test whatever happened."""
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "LAMBDAFLOW_", "AIRFLOW")):  # airflow_service_env reads os.environ too
            monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    airflow_port, docs_port, serve_port = _free_ports(3)
    today = datetime.now(UTC).date()
    env = dict(os.environ)
    env.update(
        {
            "LAMBDAFLOW_DATA_DIR": str(data_dir),
            "LAMBDAFLOW_AIRFLOW_PORT": str(airflow_port),
            "LAMBDAFLOW_DOCS_PORT": str(docs_port),
            "LAMBDAFLOW_SERVE_PORT": str(serve_port),
            "LAMBDAFLOW_LIVE_RATE": "1",
            # A closed day is complete once the archiver has caught up, and publishes within seconds.
            "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "0",
            "LAMBDAFLOW_ARCHIVE_ROLL_SECONDS": "2",
            # No catchup runs: the scheduler builds only what the test asks for.
            "LAMBDAFLOW_BATCH_START_DATE": today.isoformat(),
        }
    )
    stack = Stack(env, data_dir, report={})
    try:
        with _phase("up"):
            up = stack.run("-m", "lambdaflow.ops.stack", "up", timeout=900)
        assert up.returncode == 0, up.stderr[-5000:]
        stack.report = json.loads(up.stdout)
        yield stack
    finally:
        down = stack.run("-m", "lambdaflow.ops.stack", "down", timeout=300)
        assert down.returncode == 0, down.stderr[-3000:]


@pytest.mark.slow
def test_up_serves_everything_and_down_stops_exactly_what_up_started(stack: Stack) -> None:
    report = stack.report
    day = datetime.now(UTC).date() - timedelta(days=1)
    with _phase("login"):
        _airflow_needs_the_printed_login(report)
    with _phase("second up"):
        _a_second_up_is_refused(stack)
    with _phase("docs"):
        _docs_site_answers(report)
    with _phase("events"):
        _events_flow(stack)
    with _phase("serving"):
        _serving_answers(stack)
    with _phase("history"):
        _produce_history(stack, day)
    with _phase("backfill"):
        _backfill_runs_in_the_scheduler(stack, day)
    with _phase("ui defaults"):
        _each_dag_triggered_with_the_forms_defaults_builds_the_right_day(stack, day)
    with _phase("loopback"):
        _every_server_listens_on_loopback_only(stack)
    with _phase("down"):
        _down_stops_every_recorded_group(stack)


@contextmanager
def _phase(name: str) -> Iterator[None]:
    """Time each step: on a busy machine the report says where the minutes went."""
    started = time.monotonic()
    yield
    print(f"test_stack: {name} took {time.monotonic() - started:.1f} s", file=sys.stderr)


def _airflow_needs_the_printed_login(report: dict) -> None:
    airflow = report["airflow_url"]
    assert airflow.startswith("http://127.0.0.1:")
    assert http_json("GET", f"{airflow}/api/v2/dags")[0] == 401
    token = airflow_token(airflow, report["airflow_user"], report["airflow_password"])
    status, body = http_json("GET", f"{airflow}/api/v2/dags", token=token)
    assert status == 200
    paused = {dag["dag_id"]: dag["is_paused"] for dag in body["dags"]}
    assert {"lambda_batch", "lambda_batch_today"} <= set(paused)
    assert not any(paused.values()), paused
    assert report["airflow_dags"] == {dag_id: "unpaused" for dag_id in paused}


def _a_second_up_is_refused(stack: Stack) -> None:
    before = stack.recorded
    again = stack.run("-m", "lambdaflow.ops.stack", "up")
    assert again.returncode == 1
    assert "a stack is already up" in again.stderr and "run `make down` first" in again.stderr
    assert stack.recorded == before


def _serving_answers(stack: Stack) -> None:
    """The serving API answers what the CLI prints, and its health sees both workers running."""
    url = stack.report["serve_url"]
    status, rows = http_json("GET", url + "/api/query")
    assert status == 200 and len(rows) == 7
    status, health = http_json("GET", url + "/healthz/stream")
    assert status == 200, health


def _docs_site_answers(report: dict) -> None:
    assert report["docs_url"].startswith("http://127.0.0.1:")
    status, page = http_json("GET", report["docs_url"] + "/")
    assert status == 200 and "dbt" in page
    status, manifest = http_json("GET", report["docs_url"] + "/manifest.json")
    assert status == 200 and any(key.endswith(".fct_daily_metrics") for key in manifest["nodes"])


def _events_flow(stack: Stack) -> None:
    def counted() -> bool:
        partitions = stack.lambdaflow("status")["partitions"]
        return all(
            sum((p[layer] or {}).get("next_offset") or 0 for p in partitions) > 0 for layer in ("archiver", "stream")
        )

    wait_for(counted, timeout=60, what="the archiver and the stream worker to take in live events", every=1.0)


def _produce_history(stack: Stack, day: date) -> None:
    summary = stack.lambdaflow("produce", "--days", "1", "--events-per-day", str(EVENTS_PER_DAY), "--seed", "7")
    assert summary["events_per_date"][day.isoformat()] == EVENTS_PER_DAY
    store = RawStore(stack.data_dir, "events")

    def archived() -> int:
        files = [str(f) for f in store.files_for_date(day)]
        if not files:
            return 0
        return duckdb.execute("select count(distinct event_id) from read_parquet(?)", [files]).fetchone()[0]

    wait_for(lambda: archived() == EVENTS_PER_DAY, timeout=90, what=f"the archiver to land {day}", every=1.0)


def _backfill_runs_in_the_scheduler(stack: Stack, day: date) -> None:
    report = stack.report
    port = int(report["airflow_url"].rsplit(":", 1)[1])
    env = {**stack.env, **airflow_service_env(Settings.from_env(stack.env), port)}
    command = [
        sys.executable,
        "-m",
        "airflow",
        "backfill",
        "create",
        "--dag-id",
        "lambda_batch",
        "--from-date",
        day.isoformat(),
        "--to-date",
        day.isoformat(),
        "--reprocess-behavior",
        "completed",
        # The backfill form offers ds too; a backfill run ignores it and builds its own day.
        "--dag-run-conf",
        json.dumps({"ds": (day - timedelta(days=3)).isoformat()}),
    ]
    # The local stack's metadata database is SQLite, which can refuse a write while the scheduler
    # writes ("database is locked"). The refused transaction is rolled back whole, the backfill is
    # not created, and creating it again is what an operator would do.
    for _attempt in range(3):
        created = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
        )
        if created.returncode == 0 or "database is locked" not in created.stderr:
            break
    assert created.returncode == 0, created.stderr[-3000:]

    token = airflow_token(report["airflow_url"], report["airflow_user"], report["airflow_password"])
    runs = f"{report['airflow_url']}/api/v2/dags/lambda_batch/dagRuns"
    run = _wait_for_run(runs, token, day)
    assert run["state"] == "success", run

    manifest = json.loads((stack.data_dir / "batch" / "manifest.json").read_text())
    assert day.isoformat() in manifest["days"]
    assert (day - timedelta(days=3)).isoformat() not in manifest["days"]
    _task_logs_are_clean(stack.data_dir / "airflow" / "logs" / "dag_id=lambda_batch" / f"run_id={run['dag_run_id']}")
    assert manifest["boundary"] >= (datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)).isoformat()
    served = stack.lambdaflow("query", "--from", day.isoformat(), "--to", day.isoformat())
    assert served["events"] == EVENTS_PER_DAY and served["source"] == "batch"


def _each_dag_triggered_with_the_forms_defaults_builds_the_right_day(stack: Stack, yesterday: date) -> None:
    """Each DAG triggered through the REST API as the UI's Trigger button does with its defaults: the
    logical date filled in with now, the form's fields as they come (`ds` empty)."""
    report = stack.report
    token = airflow_token(report["airflow_url"], report["airflow_user"], report["airflow_password"])
    dags = f"{report['airflow_url']}/api/v2/dags"
    built_before = _manifest(stack)["days"][yesterday.isoformat()]["built_at"]

    def trigger(dag_id: str, conf: dict) -> tuple[int, dict]:
        now = datetime.now(UTC).isoformat()
        return http_json("POST", f"{dags}/{dag_id}/dagRuns", {"logical_date": now, "conf": conf}, token=token)

    # lambda_batch_range has no default for its days: the trigger itself is refused, saying why.
    status, refused = trigger("lambda_batch_range", {})
    assert status == 400 and "from" in json.dumps(refused), (status, refused)
    started = {
        dag_id: trigger(dag_id, conf)
        for dag_id, conf in [
            ("lambda_batch", {"ds": None}),
            ("lambda_batch_today", {"ds": None}),
            ("lambda_batch_late", {}),
        ]
    }
    finished = {}
    for dag_id, (status, run) in started.items():
        assert status == 200, (dag_id, run)
        finished[dag_id] = _wait_until_finished(f"{dags}/{dag_id}/dagRuns/{run['dag_run_id']}", token)
    # The prefilled logical date makes lambda_batch's run build its data interval: yesterday, again.
    assert finished["lambda_batch"]["state"] == "success", finished["lambda_batch"]
    assert finished["lambda_batch"]["data_interval_start"].startswith(yesterday.isoformat())
    assert _manifest(stack)["days"][yesterday.isoformat()]["built_at"] >= built_before
    assert finished["lambda_batch_late"]["state"] == "success", finished["lambda_batch_late"]
    today = datetime.now(UTC)
    if today.hour == 0:  # no hour of today is complete yet: the run fails, saying so
        assert finished["lambda_batch_today"]["state"] == "failed"
    else:
        assert finished["lambda_batch_today"]["state"] == "success", finished["lambda_batch_today"]
        assert today.date().isoformat() in _manifest(stack)["days"]


def _manifest(stack: Stack) -> dict:
    return json.loads((stack.data_dir / "batch" / "manifest.json").read_text())


def _wait_until_finished(run_url: str, token: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, run = http_json("GET", run_url, token=token)
        assert status == 200, run
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(1.0)
    raise TimeoutError(f"{run_url} did not finish in {timeout:.0f} s")


def _task_logs_are_clean(run_logs: Path) -> None:
    """A successful run's task logs hold no warning and no error: nothing red for a user to chase."""
    logs = sorted(run_logs.glob("task_id=*/attempt=*.log"))
    assert {path.parent.name for path in logs} == {
        "task_id=wait_for_complete_day",
        "task_id=build_day",
        "task_id=reconcile_day",
    }
    for path in logs:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        loud = [f"{r.get('level')}: {r.get('event')}" for r in records if r.get("level") not in ("debug", "info")]
        assert loud == [], (path.parent.name, loud)


def _wait_for_run(runs_url: str, token: str, day: date, timeout: float = 240) -> dict:
    """The backfill run for ``day`` once it has finished; fails at once when a task fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http_json("GET", f"{runs_url}?run_type=backfill", token=token)
        assert status == 200, body
        mine = [r for r in body["dag_runs"] if r["data_interval_start"].startswith(day.isoformat())]
        if mine and mine[0]["state"] in ("success", "failed"):
            return mine[0]
        if mine:
            _, tasks = http_json("GET", f"{runs_url}/{mine[0]['dag_run_id']}/taskInstances", token=token)
            broken = [t for t in tasks["task_instances"] if t["state"] in ("failed", "up_for_retry", "upstream_failed")]
            assert not broken, [(t["task_id"], t["state"]) for t in broken]
        time.sleep(1.0)
    raise TimeoutError(f"the backfill run for {day} did not finish in {timeout:.0f} s")


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def listening_sockets() -> dict[str, tuple[str, int]]:
    """{socket inode: (address in /proc's hex, port)} of every TCP socket in LISTEN state."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A":
                found[fields[9]] = (address, int(port, 16))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        pass  # exited meanwhile
    return inodes


def test_the_listening_socket_scan_tells_loopback_from_every_interface() -> None:
    import socket

    with socket.socket() as everywhere, socket.socket() as loopback:
        everywhere.bind(("0.0.0.0", 0))
        loopback.bind(("127.0.0.1", 0))
        for sock in (everywhere, loopback):
            sock.listen()
        listening = listening_sockets()
        found = {listening[i][1]: listening[i][0] for i in socket_inodes(os.getpid()) if i in listening}
        assert found[everywhere.getsockname()[1]] not in LOOPBACK
        assert found[loopback.getsockname()[1]] in LOOPBACK


def _every_server_listens_on_loopback_only(stack: Stack) -> None:
    groups = {s["pgid"] for s in stack.recorded}
    listening = listening_sockets()
    servers = {}
    for process in running_processes():
        if process.pgid in groups or process.sid in groups:
            for inode in socket_inodes(process.pid) & set(listening):
                servers[(process.pid, listening[inode][1])] = listening[inode][0]
    ports = {port for _, port in servers}
    report = stack.report
    for url in (report["airflow_url"], report["docs_url"], report["serve_url"], f"tcp://{report['kafka_bootstrap']}"):
        assert int(url.rsplit(":", 1)[1].rstrip("/")) in ports, (url, servers)
    assert {address for address in servers.values()} <= LOOPBACK, servers


def _down_stops_every_recorded_group(stack: Stack) -> None:
    recorded = stack.recorded
    assert {s["name"] for s in recorded} == {"broker", "archive", "stream", "produce", "docs", "serve", "airflow"}
    down = stack.run("-m", "lambdaflow.ops.stack", "down")
    assert down.returncode == 0, down.stderr[-3000:]
    stopped = {s["name"]: s["stopped_by"] for s in json.loads(down.stdout)["stopped"]}
    assert set(stopped) == {s["name"] for s in recorded}
    assert set(stopped.values()) <= {"SIGTERM", "SIGKILL"}, stopped  # every service was still running

    for service in recorded:
        stat = proc_stat(service["pid"])
        assert stat is None or not stat.running or stat.started != service["started"], service
    groups = {s["pgid"] for s in recorded}
    assert [p for p in running_processes() if p.pgid in groups or p.sid in groups] == []
    assert not (stack.data_dir / "run" / "stack.json").exists()

    again = stack.run("-m", "lambdaflow.ops.stack", "down")
    assert again.returncode == 0 and json.loads(again.stdout)["stopped"] == []
    assert "nothing to stop" in again.stderr


# `down` on its own, with stand-in services: fast, no Airflow.

STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
)


def _record(data_dir: Path, services: list[dict]) -> None:
    (data_dir / "run").mkdir(parents=True, exist_ok=True)
    (data_dir / "run" / "stack.json").write_text(
        json.dumps(
            {
                "stack_id": "test",
                "data_dir": str(data_dir),
                "started_at": "2026-11-27T00:00:00+00:00",
                "services": services,
                "urls": {},
            }
        )
    )


def _service(name: str, process: subprocess.Popen, command: list[str], started: int | None = None) -> dict:
    return {
        "name": name,
        "pid": process.pid,
        "pgid": os.getpgid(process.pid),
        "command": command,
        "started": proc_stat(process.pid).started if started is None else started,
        "log": "",
    }


def _down(data_dir: Path, monkeypatch: pytest.MonkeyPatch, grace: float) -> dict:
    from lambdaflow.ops.stack import down as stopping

    monkeypatch.setattr(stopping, "STOP_SECONDS_DEFAULT", grace)
    config = StackConfig(Settings.from_env({"LAMBDAFLOW_DATA_DIR": str(data_dir)}), 8080, 8081, None)
    return down(config)


def test_down_kills_a_group_that_ignores_sigterm_and_leaves_other_processes_alone(tmp_path, monkeypatch) -> None:
    command = [sys.executable, "-c", STUBBORN]
    stubborn = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline() == bystander.stdout.readline() == "ready\n"  # SIGTERM is ignored now
        _record(
            tmp_path,
            [
                _service("stubborn", stubborn, command),
                # The number now names another process: one that started at another time, or runs another command.
                _service("reused", bystander, command, started=proc_stat(bystander.pid).started - 1),
                _service("renamed", bystander, [sys.executable, "-m", "something_else"]),
            ],
        )
        result = _down(tmp_path, monkeypatch, grace=1.0)
        assert {s["name"]: s["stopped_by"] for s in result["stopped"]} == {
            "stubborn": "SIGKILL",
            "reused": "not ours",
            "renamed": "not ours",
        }
        assert stubborn.wait(10) == -9
        assert bystander.poll() is None
        assert not (tmp_path / "run" / "stack.json").exists()
    finally:
        for process in (stubborn, bystander):
            if process.poll() is None:
                process.kill()
                process.wait()
