"""The real `lambdaflow` CLI, run as a user runs it, and a topic of its own to point it at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lambdaflow.core.config import Settings
from lambdaflow.ops.processes import Child


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
            [sys.executable, "-m", "lambdaflow", *args],
            env=self.env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)


class LongLivedCli:
    """`lambdaflow` commands run one after another by one process of its own (tests/cli_server.py),
    which imports Airflow and dbt once. Started on first use and stopped by `close`, by its PID."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.env = env
        self.scratch = scratch
        self.child: Child | None = None

    def __call__(self, *args: str, timeout: float = 600) -> CliResult:
        if self.child is None:
            command = [sys.executable, str(Path(__file__).with_name("cli_server.py"))]
            self.child = Child("cli-server", command, self.env, self.scratch / "cli-server.log", requests=True).start()
        out = tempfile.NamedTemporaryFile(dir=self.scratch, suffix=".out", delete=False).name
        err = tempfile.NamedTemporaryFile(dir=self.scratch, suffix=".err", delete=False).name
        self.child.send_line(json.dumps({"args": list(args), "stdout": out, "stderr": err}))
        try:
            reply = json.loads(self.child.read_line(timeout))
        except TimeoutError:
            self.close()
            raise
        return CliResult(reply["exit_code"], Path(out).read_text(), Path(err).read_text())

    def close(self) -> None:
        """End its requests: it exits by itself, or is stopped by its PID after 30 s."""
        if self.child is not None and self.child.running():
            self.child.end_requests()
            try:
                self.child.wait(30)
            except TimeoutError:
                pass  # wait() has stopped it
        self.child = None


class TopicWorld:
    """A topic and a data directory of their own, and the CLI pointed at both, for a module whose
    tests share one archived (and perhaps built) world. No Kafka, lambdaflow or Airflow variable
    of the caller leaks in; events are complete as soon as they are archived (no allowed lateness)."""

    def __init__(self, bootstrap: str, root: Path) -> None:
        self.bootstrap = bootstrap
        self.topic = f"events-{uuid.uuid4().hex[:12]}"
        self.data_dir = root / "data"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_", "AIRFLOW"))}
        self.env.update(
            {
                "KAFKA_BOOTSTRAP": bootstrap,
                "LAMBDAFLOW_TOPIC": self.topic,
                "LAMBDAFLOW_DATA_DIR": str(self.data_dir),
                "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "0",
            }
        )
        self.today = datetime.now(UTC).date()
        self.long_lived = LongLivedCli(self.env, root / "cli-server")

    def lambdaflow(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
    ) -> CliResult:
        """A `lambdaflow` process of its own, as a user runs it."""
        return Cli(env or self.env)(*args, timeout=timeout, cwd=cwd)

    def batch(self, *args: str, timeout: float = 600, verbose: bool = False) -> CliResult:
        """`lambdaflow batch ARGS`, run by the world's long-lived process (Airflow and dbt imported once);
        ``verbose``: with Airflow's and dbt's log on stderr (`-v`)."""
        return self.long_lived(*(["-v"] if verbose else []), "batch", *args, timeout=timeout)

    def close(self) -> None:
        self.long_lived.close()

    def settings(self) -> Settings:
        return Settings.from_env(self.env)
