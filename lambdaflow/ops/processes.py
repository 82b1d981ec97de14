"""Start lambdaflow commands as child processes and stop them by their own PID."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)


def lambdaflow_command(*args: str) -> list[str]:
    """The `lambdaflow` entry point of this interpreter's environment."""
    return [sys.executable, "-m", "lambdaflow", *args]


def run_json(name: str, args: list[str], env: Mapping[str, str]) -> dict:
    """Run a command to the end and return the JSON object it prints on stdout."""
    done = subprocess.run(args, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed with exit code {done.returncode}")
    return json.loads(done.stdout)


class Service:
    """A long-running child process, stopped with SIGTERM (then SIGKILL) by PID."""

    def __init__(
        self, name: str, args: list[str], env: Mapping[str, str] | None = None, log_path: Path | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.env = dict(os.environ if env is None else env)
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Service:
        stderr: int | TextIO = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            stderr = self.log_path.open("a")
        try:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        finally:
            if not isinstance(stderr, int):
                stderr.close()
        log.info("started %s (pid %d)", self.name, self.process.pid)
        return self

    def read_line(self, timeout: float = 30.0) -> str:
        """The next line the service prints on stdout, or an error if it exits first."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.process.stdout.fileno(), False)
        buffer = ""
        while time.monotonic() < deadline:
            chunk = self.process.stdout.readline()
            buffer += chunk or ""
            if buffer.endswith("\n"):
                return buffer.rstrip("\n")
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}")
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} printed nothing in {timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", self.name, process.pid, timeout)
                process.kill()
                process.wait()
        log.info("stopped %s (pid %d), exit code %s", self.name, process.pid, process.returncode)
        return process.returncode
