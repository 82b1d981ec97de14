"""`make up` / `make down`: the whole pipeline as long-running services on 127.0.0.1.

``python -m lambdaflow.ops.stack up`` starts, each in a session (and so a
process group) of its own, logging to ``<data>/logs/<service>.log``:

* ``broker``: `lambdaflow broker`, the embedded broker (skipped when
  KAFKA_BOOTSTRAP names a Kafka); the others find it through broker.json;
* ``archive`` and ``stream``: the two consumers, `lambdaflow archive` and `stream`;
* ``produce``: `lambdaflow produce --live`, a few valid events a second, stamped now;
* ``docs``: the dbt docs site, generated under the warehouse lock, then served;
* ``airflow``: the components `airflow standalone` runs (API server and UI,
  scheduler, DAG processor, triggerer) in the Airflow home of
  :mod:`lambdaflow.batch.airflow_home`, without the log servers (see :func:`run_airflow`).

Each service is recorded in ``<data>/run/stack.json`` (replaced atomically) as
soon as it starts, so ``down`` can stop a half-started stack too. ``up`` waits
until every service is ready, prints the URLs and the Airflow login, and
returns; the services keep running.

``down`` stops exactly what stack.json records. A recorded PID is signalled
only while it is still the process ``up`` started (same start time and
command line in /proc), and then as a group: SIGTERM, and SIGKILL after a
grace period. Airflow runs each task in a process group of its own; such
processes are stopped too when they outlive their parents, recognised by
their ancestry while it lasts or by the stack id ``up`` puts in every
service's environment, and by their start time, never by name.

Ports: Airflow on LAMBDAFLOW_AIRFLOW_PORT (else AIRFLOW__API__PORT, else 8080),
the docs on LAMBDAFLOW_DOCS_PORT (else 8081); the broker picks a free one.
LAMBDAFLOW_LIVE_RATE sets the live producer's events per second.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lambdaflow.batch.airflow_home import airflow_env
from lambdaflow.core.config import Settings, settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.files import read_json, replace_json
from lambdaflow.core.output import FORMATS, configure_logging, emit, emit_record
from lambdaflow.core.project import DBT_PROJECT_DIR, PROJECT_DIR
from lambdaflow.core.warehouse import warehouse_lock
from lambdaflow.kafka.broker import HOST, BrokerAnnouncement, port_answers

log = logging.getLogger("lambdaflow.stack")

STACK_ID_VARIABLE = "LAMBDAFLOW_STACK_ID"
DAG_IDS = ("lambda_batch", "lambda_batch_today")
# Readiness waits poll; these are the most they wait on a busy 2-core machine.
READY_SECONDS = {"broker": 60, "archive": 240, "stream": 240, "produce": 120, "docs": 300, "airflow": 480}
STOP_SECONDS = {"airflow": 60.0}
STOP_SECONDS_DEFAULT = 30.0
POLL_SECONDS = 0.25


class StackError(LambdaflowError):
    """The stack cannot start or stop as asked; the message says why."""


# configuration


@dataclass(frozen=True)
class StackConfig:
    settings: Settings
    airflow_port: int
    docs_port: int
    live_rate: str | None
    """Events per second of the live producer (LAMBDAFLOW_LIVE_RATE; default: `produce --live`'s)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StackConfig:
        airflow_port = _port(environ, "LAMBDAFLOW_AIRFLOW_PORT", "AIRFLOW__API__PORT", default=8080)
        docs_port = _port(environ, "LAMBDAFLOW_DOCS_PORT", default=8081)
        if airflow_port == docs_port:
            raise StackError(f"Airflow and the docs site cannot share port {docs_port}")
        live_rate = environ.get("LAMBDAFLOW_LIVE_RATE", "").strip() or None
        if live_rate is not None and not _positive_number(live_rate):
            raise StackError(f"LAMBDAFLOW_LIVE_RATE={live_rate!r} must be a number of events per second above 0")
        return cls(settings(), airflow_port, docs_port, live_rate)

    @property
    def run_dir(self) -> Path:
        return self.settings.layout.run

    @property
    def stack_file(self) -> Path:
        return self.run_dir / "stack.json"

    @property
    def logs_dir(self) -> Path:
        return self.settings.layout.logs

    @property
    def airflow_url(self) -> str:
        return f"http://{HOST}:{self.airflow_port}"

    @property
    def docs_url(self) -> str:
        return f"http://{HOST}:{self.docs_port}"


def _positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _port(environ: Mapping[str, str], *names: str, default: int) -> int:
    for name in names:
        raw = environ.get(name, "").strip()
        if raw:
            if not raw.isdigit() or not 1 <= int(raw) <= 65535:
                raise StackError(f"{name}={raw!r} is not a TCP port (1-65535)")
            return int(raw)
    return default


def airflow_service_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment Airflow's components, and any airflow command meant for this stack, run with.

    Airflow 3 tasks report to the API server's execution API, so the scheduler
    must know where it listens. This environment's bin comes first on PATH, so
    that `airflow` and `dbt` are the project's own.
    """
    env = {**os.environ, **airflow_env(settings)}
    env["AIRFLOW__API__PORT"] = str(port)
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://{HOST}:{port}/execution/")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return env


# processes, as /proc shows them


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    started: int
    """Clock ticks after boot: with the PID, it names one process for the machine's uptime."""

    @property
    def running(self) -> bool:
        """Not a zombie: a zombie has nothing left to stop, it only waits for its parent."""
        return self.state not in ("Z", "X")


def proc_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return ProcStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="surrogateescape") for part in raw.split(b"\0")[:-1]]


def running_processes() -> list[ProcStat]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat.running:
                found.append(stat)
    return found


def carries_stack_id(pid: int, stack_id: str) -> bool:
    """Whether ``up`` started the process: it puts the stack id in every service's environment.

    Only a hint: a process that rewrites its title, as Airflow's components do,
    may overwrite the environment /proc shows.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{STACK_ID_VARIABLE}={stack_id}".encode() in environ.split(b"\0")


@dataclass(frozen=True)
class Recorded:
    """One service as stack.json records it: the leader of its own session and process group."""

    name: str
    pid: int
    pgid: int
    command: list[str]
    started: int
    log: str

    def leader(self) -> str:
        """``ours`` while the recorded PID is still the process ``up`` started (same start time and
        command line; a zombie keeps its start time), ``gone`` once it has been reaped, ``other``
        when the number now belongs to another process."""
        stat = proc_stat(self.pid)
        if stat is None:
            return "gone"
        if stat.started != self.started:
            return "other"
        if stat.running and proc_cmdline(self.pid) != self.command:
            return "other"
        return "ours"

    def members(self, processes: list[ProcStat] | None = None) -> list[ProcStat]:
        """The running processes of the service's group.

        While the leader is ours, or gone (a group outlives its leader and its
        number cannot be reused while any process still holds it), every
        process of the group in the leader's session that started after it is
        the service's.
        """
        if self.leader() == "other":
            return []
        return [
            p
            for p in (processes if processes is not None else running_processes())
            if p.pgid == self.pgid and p.sid == self.pgid and p.started >= self.started
        ]

    def is_alive(self) -> bool:
        return bool(self.members())


# the stack file


@dataclass
class StackFile:
    path: Path
    stack_id: str
    data_dir: str
    started_at: str
    services: list[Recorded]
    urls: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> StackFile | None:
        document = read_json(path)
        if not document:
            return None
        return cls(
            path=path,
            stack_id=document["stack_id"],
            data_dir=document["data_dir"],
            started_at=document["started_at"],
            services=[Recorded(**service) for service in document["services"]],
            urls=document.get("urls", {}),
        )

    def write(self) -> None:
        document = {k: v for k, v in asdict(self).items() if k != "path"}
        replace_json(self.path, document)

    def alive(self) -> list[Recorded]:
        return [service for service in self.services if service.is_alive()]


@contextmanager
def _exclusive(config: StackConfig) -> Iterator[None]:
    """One `up` or `down` at a time per data directory."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    with (config.run_dir / "stack.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `make up` or `make down` is running for {config.settings.data_dir}") from None
        yield


# up


def up(config: StackConfig) -> dict[str, Any]:
    """Start every service, wait until each is ready, and return what a user needs to reach them."""
    with _exclusive(config):
        _refuse_a_running_stack(config)
        _require_free_ports(config)
        stack = StackFile(
            path=config.stack_file,
            stack_id=uuid.uuid4().hex,
            data_dir=str(config.settings.data_dir),
            started_at=_now(),
            services=[],
            urls={},
        )
        try:
            report = _start_all(config, stack)
        except BaseException:
            log.error("the stack did not come up; stopping what was started")
            _stop_all(stack)
            config.stack_file.unlink(missing_ok=True)
            raise
    return report


def _refuse_a_running_stack(config: StackConfig) -> None:
    recorded = StackFile.read(config.stack_file)
    if recorded is None:
        return
    alive = recorded.alive()
    if alive:
        listed = ", ".join(f"{s.name} (pid {s.pid})" for s in alive)
        raise StackError(f"a stack is already up for {config.settings.data_dir}: {listed}; run `make down` first")
    log.info("%s records a stack that is no longer running; replacing it", config.stack_file)
    config.stack_file.unlink()


def _require_free_ports(config: StackConfig) -> None:
    for what, port in (("Airflow", config.airflow_port), ("the docs site", config.docs_port)):
        if port_answers(HOST, port):
            raise StackError(
                f"port {port} on {HOST} for {what} is in use; choose another "
                f"({'LAMBDAFLOW_AIRFLOW_PORT' if what == 'Airflow' else 'LAMBDAFLOW_DOCS_PORT'})"
            )


def _start_all(config: StackConfig, stack: StackFile) -> dict[str, Any]:
    started, bootstrap = _start_services(config, stack)
    airflow = _wait_until_ready(config, started)
    stack.urls = {"airflow": config.airflow_url, "docs": config.docs_url}
    stack.write()
    return {
        "airflow_url": config.airflow_url,
        "airflow_user": airflow.user,
        "airflow_password": airflow.password,
        "airflow_dags": {dag_id: "paused" if paused else "unpaused" for dag_id, paused in airflow.paused.items()},
        "docs_url": config.docs_url,
        "kafka_bootstrap": bootstrap,
        "data_dir": str(config.settings.data_dir),
        "logs": str(config.logs_dir),
        "services": {name: service.pid for name, service in started.items()},
        "stop_with": "make down",
    }


def _start_services(config: StackConfig, stack: StackFile) -> tuple[dict[str, Recorded], str]:
    """Start every service; only the broker is waited for, since the consumers look it up as they start."""
    # The data directory goes in as an absolute path: the services run in the project directory.
    env = {**os.environ, "LAMBDAFLOW_DATA_DIR": str(config.settings.data_dir), STACK_ID_VARIABLE: stack.stack_id}
    lambdaflow = [sys.executable, "-m", "lambdaflow"]
    started: dict[str, Recorded] = {}
    if config.settings.kafka_bootstrap:
        log.info("KAFKA_BOOTSTRAP is set: using the Kafka at %s, no embedded broker", config.settings.kafka_bootstrap)
        bootstrap = config.settings.kafka_bootstrap
    else:
        started["broker"] = _launch(config, stack, "broker", [*lambdaflow, "broker"], env)
        bootstrap = _wait(started["broker"], lambda: _broker_ready(config, started["broker"]))
    rate = ["--rate", config.live_rate] if config.live_rate else []
    for name, command in (
        ("archive", [*lambdaflow, "archive"]),
        ("stream", [*lambdaflow, "stream"]),
        ("produce", [*lambdaflow, "produce", "--live", *rate]),
        ("docs", [sys.executable, "-m", "lambdaflow.ops.stack", "docs", "--port", str(config.docs_port)]),
    ):
        started[name] = _launch(config, stack, name, command, env)
    _prepare_airflow(config)
    airflow = {**airflow_service_env(config.settings, config.airflow_port), STACK_ID_VARIABLE: stack.stack_id}
    started["airflow"] = _launch(
        config, stack, "airflow", [sys.executable, "-m", "lambdaflow.ops.stack", "airflow"], airflow
    )
    return started, bootstrap


def _wait_until_ready(config: StackConfig, started: dict[str, Recorded]) -> AirflowReady:
    """Wait for each service to be ready; return what Airflow said once it was."""
    from lambdaflow.core.raw_store import RawStore
    from stream_worker.worker import SpeedPaths

    topic = config.settings.topic
    archive, stream, produce = started["archive"], started["stream"], started["produce"]
    _wait(archive, lambda: _status_written(RawStore(config.settings.data_dir, topic).state_dir, archive.pid))
    _wait(stream, lambda: _status_written(SpeedPaths(config.settings.data_dir, topic).root, stream.pid))
    _wait(produce, lambda: _log_says(produce, "live: sending to"))
    _wait(started["docs"], lambda: _http_ok(config.docs_url + "/"))
    airflow = _wait(started["airflow"], lambda: _airflow_ready(config))
    for service in started.values():
        if not service.is_alive():
            raise StackError(f"{service.name} stopped while the others started; see {service.log}")
    _warn_about_paused(airflow.paused)
    return airflow


def _launch(config: StackConfig, stack: StackFile, name: str, command: list[str], env: Mapping[str, str]) -> Recorded:
    """Start one service in a session of its own and record it before anything else happens."""
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.logs_dir / f"{name}.log"
    with log_path.open("ab") as output:
        output.write(f"\n--- {_now()} started: {' '.join(command)}\n".encode())
        output.flush()
        process = subprocess.Popen(
            command,
            env=dict(env),
            cwd=PROJECT_DIR,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stat = proc_stat(process.pid)
    recorded = Recorded(
        name=name,
        pid=process.pid,
        pgid=process.pid,
        command=list(command),
        started=stat.started if stat else 0,
        log=str(log_path),
    )
    stack.services.append(recorded)
    stack.write()
    log.info("started %s (pid %d), logging to %s", name, process.pid, log_path)
    return recorded


def _wait(service: Recorded, ready: Callable[[], Any]) -> Any:
    """Poll ``ready`` until it returns something, failing fast when the service exits."""
    timeout = READY_SECONDS[service.name]
    started = time.monotonic()
    while True:
        result = ready()
        if result:
            log.info("%s is ready (%.0f s)", service.name, time.monotonic() - started)
            return result
        if service.leader() != "ours":
            raise StackError(
                f"{service.name} exited before it was ready; the end of {service.log}:\n{_tail(service.log)}"
            )
        if time.monotonic() - started > timeout:
            raise StackError(f"{service.name} was not ready in {timeout} s; see {service.log}")
        time.sleep(POLL_SECONDS)


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _broker_ready(config: StackConfig, broker: Recorded) -> str | None:
    announcement = BrokerAnnouncement.read(config.settings.broker_file)
    if announcement is None or announcement.pid != broker.pid or not announcement.is_alive():
        return None
    return announcement.bootstrap


def _status_written(folder: Path, pid: int) -> bool:
    """A consumer is ready once it owns a partition: it then writes that partition's status."""
    return any((read_json(path) or {}).get("pid") == pid for path in folder.glob("status-*.json"))


def _log_says(service: Recorded, text: str) -> bool:
    return text in Path(service.log).read_text(errors="replace").rsplit("\n--- ", 1)[-1]


def _prepare_airflow(config: StackConfig) -> None:
    """Create Airflow's database and the warehouse pool once, as `lambdaflow batch` does."""
    from lambdaflow.batch import airflow_home

    log.info("preparing the Airflow home %s", airflow_env(config.settings)["AIRFLOW_HOME"])
    airflow_home.prepare(config.settings)


# Airflow over its REST API


def http_json(
    method: str, url: str, body: object = None, token: str | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One HTTP request to a local service, straight (no proxy); returns the status and the parsed body."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, _parse(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _parse(error.read())


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _http_ok(url: str) -> bool:
    try:
        return http_json("GET", url)[0] == 200
    except OSError:  # refused, reset or timed out: not serving yet
        return False


def airflow_token(base_url: str, user: str, password: str) -> str:
    status, body = http_json("POST", f"{base_url}/auth/token", {"username": user, "password": password})
    if status not in (200, 201) or not isinstance(body, dict) or "access_token" not in body:
        raise StackError(f"Airflow refused the login for {user!r} (HTTP {status})")
    return body["access_token"]


def airflow_login(config: StackConfig) -> tuple[str, str] | None:
    """The user and password the simple auth manager generated on the API server's first start.

    As under `airflow standalone`, they are kept in
    $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.
    """
    home = Path(airflow_env(config.settings)["AIRFLOW_HOME"])
    passwords = read_json(home / "simple_auth_manager_passwords.json.generated") if home.exists() else None
    if not passwords:
        return None
    user = "admin" if "admin" in passwords else sorted(passwords)[0]
    return user, passwords[user]


@dataclass(frozen=True)
class AirflowReady:
    user: str
    password: str
    paused: dict[str, bool]
    """Every DAG the API lists, and whether it is paused."""


def _airflow_ready(config: StackConfig) -> AirflowReady | None:
    """Healthy components, a working login, and lambdaflow's DAGs parsed."""
    try:
        return _airflow_ready_now(config)
    except OSError:  # the API server is not listening yet, or too busy to answer in time
        return None


def _airflow_ready_now(config: StackConfig) -> AirflowReady | None:
    status, health = http_json("GET", f"{config.airflow_url}/api/v2/monitor/health")
    components = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    if status != 200 or not isinstance(health, dict):
        return None
    if not all((health.get(c) or {}).get("status") == "healthy" for c in components):
        return None
    login = airflow_login(config)
    if login is None:
        return None
    try:
        token = airflow_token(config.airflow_url, *login)
    except StackError as error:
        log.debug("%s; trying again", error)
        return None
    status, listed = http_json("GET", f"{config.airflow_url}/api/v2/dags?limit=100", token=token)
    paused = {d["dag_id"]: d["is_paused"] for d in listed.get("dags", [])} if status == 200 else {}
    if not all(dag_id in paused for dag_id in DAG_IDS):
        return None
    return AirflowReady(*login, paused=paused)


def _warn_about_paused(paused: dict[str, bool]) -> None:
    """New DAGs start unpaused (DAGS_ARE_PAUSED_AT_CREATION=False); one paused since was paused by
    someone, in this Airflow home, and stays so."""
    for dag_id in sorted(d for d, is_paused in paused.items() if is_paused):
        log.warning("DAG %s is paused: the scheduler will not run it until it is unpaused in the UI", dag_id)


# down


def down(config: StackConfig) -> dict[str, Any]:
    """Stop what stack.json records, and nothing else; idempotent."""
    with _exclusive(config):
        stack = StackFile.read(config.stack_file)
        if stack is None:
            log.info("nothing to stop: no stack is recorded in %s", config.stack_file)
            return {"stopped": [], "stack_file": str(config.stack_file)}
        stopped = _stop_all(stack)
        left = stack.alive()
        if left:
            raise StackError("still running after SIGKILL: " + ", ".join(f"{s.name} (pid {s.pid})" for s in left))
        config.stack_file.unlink(missing_ok=True)
    return {"stopped": stopped, "stack_file": str(config.stack_file)}


def _stop_all(stack: StackFile) -> list[dict[str, Any]]:
    """Everything but the broker first (the archiver publishes its last batch through it), then the broker."""
    first = [s for s in reversed(stack.services) if s.name != "broker"]
    last = [s for s in stack.services if s.name == "broker"]
    strays: dict[int, ProcStat] = {}
    outcomes = _stop_services(first, strays) + _stop_services(last, strays)
    _stop_strays(list(strays.values()), stack.stack_id)
    return outcomes


def _stop_services(services: list[Recorded], strays: dict[int, ProcStat]) -> list[dict[str, Any]]:
    """SIGTERM each service's process group, wait, and SIGKILL the groups still there.

    Adds to ``strays`` the processes seen leaving the groups meanwhile.
    """
    if not services:
        return []
    strays.update(_left_their_group(services, running_processes()))
    outcomes = {s.name: _signal(s, signal.SIGTERM) for s in services}
    grace = max(STOP_SECONDS.get(s.name, STOP_SECONDS_DEFAULT) for s in services)

    def all_stopped() -> bool:
        processes = running_processes()
        strays.update(_left_their_group(services, processes))
        return not any(s.members(processes) for s in services)

    if not _wait_until(all_stopped, grace):
        for service in services:
            if service.members():
                log.warning(
                    "%s (group %d) still runs %.0f s after SIGTERM; sending SIGKILL", service.name, service.pgid, grace
                )
                outcomes[service.name] = _signal(service, signal.SIGKILL)
        _wait_until(all_stopped, 10.0)
    for service in services:
        log.info("%s (pid %d): %s", service.name, service.pid, outcomes[service.name])
    return [{"name": s.name, "pid": s.pid, "pgid": s.pgid, "stopped_by": outcomes[s.name]} for s in services]


def _signal(service: Recorded, signum: signal.Signals) -> str:
    """Signal the service's group when it is provably the one ``up`` started; say what was done."""
    leader = service.leader()
    if leader == "other":
        log.warning(
            "pid %d is no longer %s (another process has its number); leaving it alone", service.pid, service.name
        )
        return "not ours"
    if not service.members():
        return "already stopped"
    if leader == "ours":
        try:
            os.killpg(service.pgid, signum)
        except ProcessLookupError:  # the last of the group exited just now
            return "already stopped"
    else:  # the leader is gone: signal what is left of its group, process by process
        for member in service.members():
            _kill_quietly(member.pid, signum)
    return signum.name


def _left_their_group(services: list[Recorded], processes: list[ProcStat]) -> dict[int, ProcStat]:
    """Descendants of the services' groups that now lead groups of their own (Airflow's task runners).

    Seen while their parents still run, so that they can be stopped once the
    parents are gone and nothing links them to the stack any more.
    """
    pgids = {s.pgid for s in services if s.leader() != "other"}
    children: dict[int, list[ProcStat]] = {}
    for process in processes:
        children.setdefault(process.ppid, []).append(process)
    found: dict[int, ProcStat] = {}
    todo = [p for p in processes if p.pgid in pgids]
    while todo:
        for child in children.get(todo.pop().pid, []):
            if child.pgid not in pgids and child.pid not in found:
                found[child.pid] = child
                todo.append(child)
    return found


def _stop_strays(seen: list[ProcStat], stack_id: str) -> None:
    """Stop what outlived the groups, once all are down: processes seen leaving them, and any other
    process still carrying the stack id."""
    marked = [p for p in running_processes() if p.pid != os.getpid() and carries_stack_id(p.pid, stack_id)]
    strays = [p for p in {p.pid: p for p in [*seen, *marked]}.values() if _same_process(p)]
    if not strays:
        return
    log.warning(
        "stopping %d processes the stack started outside its groups: %s", len(strays), sorted(p.pid for p in strays)
    )
    for stray in strays:
        _kill_quietly(stray.pid, signal.SIGTERM)
    if not _wait_until(lambda: not any(_same_process(p) for p in strays), 10.0):
        for stray in strays:
            if _same_process(stray):
                _kill_quietly(stray.pid, signal.SIGKILL)


def _same_process(stat: ProcStat) -> bool:
    """Still running, and still that process: the number was not given to another since."""
    now = proc_stat(stat.pid)
    return now is not None and now.running and now.started == stat.started


def _kill_quietly(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# the Airflow service


AIRFLOW_COMPONENTS = {
    "api-server": ["api-server"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
}


def run_airflow(config: StackConfig) -> int:
    """What `airflow standalone` runs (API server, scheduler, DAG processor, triggerer), held together.

    Not `standalone` itself: its scheduler and triggerer also start log servers
    on every interface at fixed ports (8793, 8794), which two stacks cannot
    share and which this stack must not open beyond 127.0.0.1. With the local
    executor the API server reads task logs from the files, so they are
    skipped. The scheduler starts once the API server listens: a task it
    queued earlier could not reach the execution API and would fail its first
    try. Each component logs to <data>/logs/airflow-<component>.log. When one
    exits the others are stopped, so `up` and `down` see one service.
    """
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    components: dict[str, subprocess.Popen] = {}
    for name, args in AIRFLOW_COMPONENTS.items():
        if name == "scheduler":
            _wait_for_api_server(config, components["api-server"], stop)
        if stop.is_set() or any(process.poll() is not None for process in components.values()):
            break
        components[name] = _start_component(config, name, args)
    failed = next((name for name, process in components.items() if process.poll() is not None), None)
    while failed is None and not stop.wait(1.0):
        failed = next((name for name, process in components.items() if process.poll() is not None), None)
    if failed:
        log.error(
            "airflow %s exited with code %s; stopping the others (see %s)",
            failed,
            components[failed].returncode,
            config.logs_dir / f"airflow-{failed}.log",
        )
    else:
        log.info("stopping airflow %s", ", ".join(components))
    _stop_components(components)
    log.info("airflow stopped")
    return 1 if failed else 0


def _wait_for_api_server(config: StackConfig, api_server: subprocess.Popen, stop: threading.Event) -> None:
    while not stop.is_set() and api_server.poll() is None and not port_answers(HOST, config.airflow_port):
        stop.wait(POLL_SECONDS)


def _start_component(config: StackConfig, name: str, args: list[str]) -> subprocess.Popen:
    path = config.logs_dir / f"airflow-{name}.log"
    with path.open("ab") as output:
        output.write(f"\n--- {_now()} started: airflow {' '.join(args)}\n".encode())
        output.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
    log.info("started airflow %s (pid %d), logging to %s", name, process.pid, path)
    return process


def _stop_components(components: dict[str, subprocess.Popen]) -> None:
    for process in components.values():
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_SECONDS["airflow"] - 10
    for name, process in components.items():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("airflow %s ignored SIGTERM; killing it", name)
            process.kill()
            process.wait()


# the docs service


def serve_docs(config: StackConfig) -> None:
    """Generate the dbt docs under the warehouse lock, then serve them until stopped.

    Generating opens the warehouse, which a batch build may be writing: the
    lock every build holds makes it wait. It runs in a child process because
    dbt-duckdb keeps its connection, and with it DuckDB's lock on the file, for
    the life of the process: a server holding it would fail every build. On a
    fresh data directory dbt creates an empty warehouse, and the site shows the
    models without row counts until the first build. The site's files live
    under <data>/docs, apart from the dbt project's own target/.
    """
    target = config.settings.layout.docs_target
    common = [
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target-path",
        str(target),
    ]
    env = {**os.environ, "LAMBDAFLOW_DATA_DIR": str(config.settings.data_dir)}
    env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    dbt = str(Path(sys.executable).parent / "dbt")
    with warehouse_lock(config.settings):
        log.info("generating the dbt docs into %s", target)
        generated = subprocess.run(
            [dbt, "docs", "generate", *common, "--log-path", str(config.logs_dir / "dbt")],
            env=env,
            stdin=subprocess.DEVNULL,
        )
    if generated.returncode != 0:
        raise StackError(f"dbt docs generate failed with exit code {generated.returncode}")
    log.info("serving the dbt docs on %s", config.docs_url)
    from dbt.cli.main import dbtRunner  # serving opens no connection, so this process holds no lock

    os.environ.update(env)
    dbtRunner().invoke(["docs", "serve", *common, "--host", HOST, "--port", str(config.docs_port), "--no-browser"])


# the command line


def _emit_down(result: dict[str, Any], fmt: str) -> None:
    """JSON: one object; a table: a row per service stopped (none when nothing was up)."""
    if fmt == "json":
        emit_record(result, fmt)
    elif result["stopped"]:
        emit(result["stopped"], fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambdaflow.ops.stack",
        description="The lambdaflow stack on 127.0.0.1: `up` starts it and returns, `down` stops it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start every service and wait until each is ready"),
        ("down", "stop the services `up` recorded"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--format", dest="fmt", choices=FORMATS, default="json", help="JSON (default), or a table for people"
        )
    docs = commands.add_parser("docs", help="generate and serve the dbt docs (a service of `up`)")
    docs.add_argument("--port", type=int, help="overrides LAMBDAFLOW_DOCS_PORT")
    commands.add_parser("airflow", help="run Airflow's components together (a service of `up`)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = StackConfig.from_env(os.environ)
        if args.command == "docs":
            if args.port:
                config = StackConfig(config.settings, config.airflow_port, args.port, config.live_rate)
            serve_docs(config)
            return 0
        if args.command == "airflow":
            return run_airflow(config)
        if args.command == "up":
            emit_record(up(config), args.fmt)
        else:
            _emit_down(down(config), args.fmt)
    except LambdaflowError as error:
        print(f"stack {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stack {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
