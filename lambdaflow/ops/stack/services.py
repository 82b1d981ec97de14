"""Two services of the stack that are lambdaflow's own: Airflow's components held together, and the dbt docs site."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lambdaflow.core import metrics
from lambdaflow.core.config import Settings
from lambdaflow.core.project import DBT_PROJECT_DIR
from lambdaflow.core.warehouse import warehouse_lock
from lambdaflow.kafka.broker import HOST, port_answers
from lambdaflow.ops.processes import Child
from lambdaflow.ops.stack.config import POLL_SECONDS, STOP_SECONDS, StackConfig, StackError

log = logging.getLogger("lambdaflow.stack")


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
    components: dict[str, Child] = {}
    for name, args in AIRFLOW_COMPONENTS.items():
        if name == "scheduler":
            _wait_for_api_server(config, components["api-server"], stop)
        if stop.is_set() or not all(child.running() for child in components.values()):
            break
        components[name] = _start_component(config, name, args)
    failed = next((name for name, child in components.items() if not child.running()), None)
    while failed is None and not stop.wait(1.0):
        failed = next((name for name, child in components.items() if not child.running()), None)
    if failed:
        log.error(
            "airflow %s exited with code %s; stopping the others (see %s)",
            failed,
            components[failed].result().returncode,
            components[failed].log_path,
        )
    else:
        log.info("stopping airflow %s", ", ".join(components))
    _stop_components(components)
    log.info("airflow stopped")
    return 1 if failed else 0


def _wait_for_api_server(config: StackConfig, api_server: Child, stop: threading.Event) -> None:
    while not stop.is_set() and api_server.running() and not port_answers(HOST, config.airflow_port):
        stop.wait(POLL_SECONDS)


def _start_component(config: StackConfig, name: str, args: list[str]) -> Child:
    """One component, in this service's process group, so that `down` stops them together."""
    path = config.logs_dir / f"airflow-{name}.log"
    command = [sys.executable, "-m", "airflow", *args]
    child = Child(f"airflow {name}", command, None, path, stdout_path=path, own_session=False, mark_start=True).start()
    log.info("started airflow %s (pid %d), logging to %s", name, child.pid, path)
    return child


def _stop_components(components: dict[str, Child]) -> None:
    """SIGTERM to all at once, then each gets what is left of the grace period before SIGKILL."""
    for child in components.values():
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS["airflow"] - 10
    for child in components.values():
        child.stop(grace=max(0.1, deadline - time.monotonic()))


DOCS_FILES = ("index.html", "manifest.json", "catalog.json")
DOCS_CHECK_SECONDS = 10.0


def generate_docs(settings: Settings, logs_dir: Path) -> None:
    """`dbt docs generate` into <data>/docs/target, under the warehouse lock every batch build holds.

    Generating opens the warehouse, which a build may be writing: the lock makes it wait. It runs
    in a child process because dbt-duckdb keeps its connection, and with it DuckDB's lock on the
    file, for the life of the process. The site is generated into a folder of its own and its three
    files then replace the served ones one by one, so a reader never gets a half-written file.
    """
    metrics.defined()  # the models build their columns from it: a bad one is refused before dbt runs
    target = settings.layout.docs_target
    fresh = target.with_name(target.name + ".next")
    env = {**os.environ, "LAMBDAFLOW_DATA_DIR": str(settings.data_dir)}
    env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    dbt = str(Path(sys.executable).parent / "dbt")
    with warehouse_lock(settings):
        log.info("generating the dbt docs into %s", target)
        generated = subprocess.run(
            [dbt, "docs", "generate", *_dbt_paths(fresh), "--log-path", str(logs_dir / "dbt")],
            env=env,
            stdin=subprocess.DEVNULL,
        )
    if generated.returncode != 0:
        raise StackError(f"dbt docs generate failed with exit code {generated.returncode}")
    target.mkdir(parents=True, exist_ok=True)
    for name in DOCS_FILES:
        os.replace(fresh / name, target / name)


def _dbt_paths(target: Path) -> list[str]:
    return ["--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", str(target)]


def _regenerate_after_builds(config: StackConfig) -> None:
    """Generate the site again whenever a build has published (the batch manifest changed), so it
    shows the warehouse as the last build left it."""
    manifest = config.settings.layout.batch_manifest

    def changed_at() -> float | None:
        try:
            return manifest.stat().st_mtime
        except FileNotFoundError:
            return None

    seen = changed_at()
    while True:
        time.sleep(DOCS_CHECK_SECONDS)
        now = changed_at()
        if now == seen:
            continue
        seen = now
        try:
            generate_docs(config.settings, config.logs_dir)
        except (StackError, OSError) as error:
            log.warning("the dbt docs were not regenerated after a build: %s", error)


def serve_docs(config: StackConfig) -> None:
    """Generate the dbt docs, then serve them until stopped, generating them again after each build.

    On a fresh data directory dbt creates an empty warehouse, and the site shows the models
    without row counts until the first build. The site's files live under <data>/docs, apart from
    the dbt project's own target/.
    """
    generate_docs(config.settings, config.logs_dir)
    threading.Thread(target=_regenerate_after_builds, args=(config,), name="docs-after-builds", daemon=True).start()
    log.info("serving the dbt docs on %s", config.docs_url)
    from dbt.cli.main import dbtRunner  # serving opens no connection, so this process holds no lock

    os.environ["LAMBDAFLOW_DATA_DIR"] = str(config.settings.data_dir)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    target = config.settings.layout.docs_target
    dbtRunner().invoke(
        ["docs", "serve", *_dbt_paths(target), "--host", HOST, "--port", str(config.docs_port), "--no-browser"]
    )
