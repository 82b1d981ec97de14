"""`make up`: start every service, each in a session of its own, and wait until each is ready."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambdaflow.batch.airflow_home import airflow_env
from lambdaflow.core.project import PROJECT_DIR
from lambdaflow.core.raw_store import RawStore
from lambdaflow.kafka.broker import HOST, BrokerAnnouncement, port_answers
from lambdaflow.ops.airflow_api import answers_ok, healthy, http_json, logged_in
from lambdaflow.ops.processes import Child, tail
from lambdaflow.ops.procfs import proc_stat
from lambdaflow.ops.stack.config import (
    DAG_IDS,
    POLL_SECONDS,
    READY_SECONDS,
    STACK_ID_VARIABLE,
    StackConfig,
    StackError,
    airflow_service_env,
    now_text,
)
from lambdaflow.ops.stack.down import stop_all
from lambdaflow.ops.stack.records import Recorded, StackFile, exclusive

log = logging.getLogger("lambdaflow.stack")


def up(config: StackConfig) -> dict[str, Any]:
    """Start every service, wait until each is ready, and return what a user needs to reach them."""
    with exclusive(config):
        _refuse_a_running_stack(config)
        _require_free_ports(config)
        stack = StackFile(
            path=config.stack_file,
            stack_id=uuid.uuid4().hex,
            data_dir=str(config.settings.data_dir),
            started_at=now_text(),
            services=[],
            urls={},
        )
        try:
            report = _start_all(config, stack)
        except BaseException:
            log.error("the stack did not come up; stopping what was started")
            stop_all(stack)
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
    for what, port, variable in (
        ("Airflow", config.airflow_port, "LAMBDAFLOW_AIRFLOW_PORT"),
        ("the docs site", config.docs_port, "LAMBDAFLOW_DOCS_PORT"),
        ("the serving API", config.serve_port, "LAMBDAFLOW_SERVE_PORT"),
    ):
        if port_answers(HOST, port):
            raise StackError(f"port {port} on {HOST} for {what} is in use; choose another ({variable})")


def _start_all(config: StackConfig, stack: StackFile) -> dict[str, Any]:
    started, bootstrap = _start_services(config, stack)
    airflow = _wait_until_ready(config, started)
    stack.urls = {"airflow": config.airflow_url, "docs": config.docs_url, "serve": config.serve_url}
    stack.write()
    return {
        "airflow_url": config.airflow_url,
        "airflow_user": airflow.user,
        "airflow_password": airflow.password,
        "airflow_dags": {dag_id: "paused" if paused else "unpaused" for dag_id, paused in airflow.paused.items()},
        "docs_url": config.docs_url,
        "serve_url": config.serve_url,
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
        ("serve", [*lambdaflow, "serve", "--port", str(config.serve_port)]),
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
    topic = config.settings.topic
    archive, stream, produce = started["archive"], started["stream"], started["produce"]
    store = RawStore(config.settings.data_dir, topic, config.settings.storage)
    _wait(archive, lambda: _status_written(store.statuses(fallback=0), archive.pid))
    _wait(stream, lambda: _status_written(config.settings.speed_files.statuses(), stream.pid))
    _wait(produce, lambda: _log_says(produce, "live: sending to"))
    _wait(started["docs"], lambda: answers_ok(config.docs_url + "/"))
    _wait(started["serve"], lambda: answers_ok(config.serve_url + "/api/definitions"))
    airflow = _wait(started["airflow"], lambda: _airflow_ready(config))
    for service in started.values():
        if not service.is_alive():
            raise StackError(f"{service.name} stopped while the others started; see {service.log}")
    _warn_about_paused(airflow.paused)
    return airflow


def _launch(config: StackConfig, stack: StackFile, name: str, command: list[str], env: Mapping[str, str]) -> Recorded:
    """Start one service in a session of its own and record it before anything else happens. It
    outlives `up`: `down` stops it by the record."""
    log_path = config.logs_dir / f"{name}.log"
    child = Child(name, command, env, log_path, stdout_path=log_path, cwd=PROJECT_DIR, mark_start=True).start()
    stat = proc_stat(child.pid)
    recorded = Recorded(
        name=name,
        pid=child.pid,
        pgid=child.pid,
        command=list(command),
        started=stat.started if stat else 0,
        log=str(log_path),
    )
    stack.services.append(recorded)
    stack.write()
    log.info("started %s (pid %d), logging to %s", name, child.pid, log_path)
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
                f"{service.name} exited before it was ready; the end of {service.log}:\n{tail(Path(service.log), 15)}"
            )
        if time.monotonic() - started > timeout:
            raise StackError(f"{service.name} was not ready in {timeout} s; see {service.log}")
        time.sleep(POLL_SECONDS)


def _broker_ready(config: StackConfig, broker: Recorded) -> str | None:
    announcement = BrokerAnnouncement.read(config.settings.broker_file)
    if announcement is None or announcement.pid != broker.pid or not announcement.is_alive():
        return None
    return announcement.bootstrap


def _status_written(statuses: Mapping[int, dict | None], pid: int) -> bool:
    """A consumer is ready once it owns a partition: it then writes that partition's status (where its
    storage keeps it: beside the tables on S3), naming its pid and this host."""
    host = socket.gethostname()
    return any(
        (status or {}).get("pid") == pid and (status or {}).get("host", host) == host for status in statuses.values()
    )


def _log_says(service: Recorded, text: str) -> bool:
    return text in Path(service.log).read_text(errors="replace").rsplit("\n--- ", 1)[-1]


def _prepare_airflow(config: StackConfig) -> None:
    """Create Airflow's database and the warehouse pool once, as `lambdaflow batch` does."""
    from lambdaflow.batch import airflow_home

    log.info("preparing the Airflow home %s", airflow_env(config.settings)["AIRFLOW_HOME"])
    airflow_home.prepare(config.settings)


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
    if not healthy(config.airflow_url, ("metadatabase", "scheduler", "dag_processor", "triggerer")):
        return None
    login = logged_in(config.airflow_url, config.settings.layout.airflow_home)
    if login is None:
        return None
    user, password, token = login
    status, listed = http_json("GET", f"{config.airflow_url}/api/v2/dags?limit=100", token=token)
    paused = {d["dag_id"]: d["is_paused"] for d in listed.get("dags", [])} if status == 200 else {}
    if not all(dag_id in paused for dag_id in DAG_IDS):
        return None
    return AirflowReady(user, password, paused=paused)


def _warn_about_paused(paused: dict[str, bool]) -> None:
    """New DAGs start unpaused (DAGS_ARE_PAUSED_AT_CREATION=False); one paused since was paused by
    someone, in this Airflow home, and stays so."""
    for dag_id in sorted(d for d, is_paused in paused.items() if is_paused):
        log.warning("DAG %s is paused: the scheduler will not run it until it is unpaused in the UI", dag_id)
