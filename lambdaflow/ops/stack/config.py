"""The stack's settings: ports, the live rate, where it keeps its record and logs."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lambdaflow.batch.airflow_home import airflow_env
from lambdaflow.core.config import Settings, settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.kafka.broker import HOST

STACK_ID_VARIABLE = "LAMBDAFLOW_STACK_ID"


DAG_IDS = ("lambda_batch", "lambda_batch_today", "lambda_batch_range")


READY_SECONDS = {
    "broker": 60,
    "archive": 240,
    "stream": 240,
    "produce": 120,
    "docs": 300,
    "serve": 120,
    "airflow": 480,
}


STOP_SECONDS = {"airflow": 60.0}


STOP_SECONDS_DEFAULT = 30.0


POLL_SECONDS = 0.25


class StackError(LambdaflowError):
    """The stack cannot start or stop as asked; the message says why."""


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
        serve_port = settings().serve_port
        ports = {"Airflow": airflow_port, "the docs site": docs_port, "the serving API": serve_port}
        for (one, port), (other, other_port) in itertools.combinations(ports.items(), 2):
            if port == other_port:
                raise StackError(f"{one} and {other} cannot share port {port}")
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

    @property
    def serve_port(self) -> int:
        return self.settings.serve_port

    @property
    def serve_url(self) -> str:
        return f"http://{HOST}:{self.serve_port}"


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


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
