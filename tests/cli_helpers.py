"""The real `lambdaflow` CLI, run as a user runs it, and a topic of its own to point it at."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from stream_worker.config import Settings


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class Cli:
    """Runs the installed `lambdaflow` command with its own environment."""

    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 300, cwd: Path | None = None) -> CliResult:
        done = subprocess.run(
            [sys.executable, "-m", "stream_worker", *args],
            env=self.env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)


class TopicWorld:
    """A topic and a data directory of their own, and the CLI pointed at both, for a module whose
    tests share one archived (and perhaps built) world. No Kafka, lambdaflow or Airflow variable
    of the caller leaks in; events are complete as soon as they are archived (no allowed lateness)."""

    def __init__(self, bootstrap: str, root: Path) -> None:
        self.bootstrap = bootstrap
        self.topic = f"events-{uuid.uuid4().hex[:12]}"
        self.data_dir = root / "data"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_", "AIRFLOW"))}
        self.env.update({
            "KAFKA_BOOTSTRAP": bootstrap,
            "LAMBDAFLOW_TOPIC": self.topic,
            "LAMBDAFLOW_DATA_DIR": str(self.data_dir),
            "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "0",
        })
        self.today = datetime.now(timezone.utc).date()

    def lambdaflow(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 600) -> CliResult:
        return Cli(env or self.env)(*args, timeout=timeout, cwd=cwd)

    def settings(self) -> Settings:
        return Settings.from_env(self.env)
