"""Child processes, started and stopped by their own PID: the one wrapper the demo, the `make up`
stack, the benchmark and the tests start commands with.

A child runs in a session (and so a process group) of its own, its stdout to a
file and its stderr to a log, never to a pipe, so a chatty child never blocks on
a full pipe. :meth:`Child.stop` sends SIGTERM, then SIGKILL after a grace
period, then stops whatever the child started that outlived it, each recognised
by its PID and start time (:mod:`lambdaflow.ops.procfs`), never by name.

Peak RSS (``peak_rss=True``, for the benchmark): Linux carries a process's peak
RSS across ``exec`` from the memory it had before, and a child spawned by a big
process starts from that process's memory, so ``wait4`` on a direct child
overstates it. Such a command runs under a tiny launcher (``python -S``, a few
MB) that spawns it, passes signals on, reaps it with ``wait4`` and writes its
peak RSS to a file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lambdaflow.ops.procfs import ProcStat, descendants_of, stop_leftovers

log = logging.getLogger(__name__)

# argv: the file for the peak RSS in kB, then the command. Exits as the command did (128 + N for signal N).
_LAUNCHER = """
import os, signal, sys
rusage_file, command = sys.argv[1], sys.argv[2:]
pid = os.posix_spawn(command[0], command, os.environ)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
    signal.signal(signum, lambda number, frame: os.kill(pid, number))
_, status, usage = os.wait4(pid, 0)
with open(rusage_file, "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def lambdaflow_command(*args: str) -> list[str]:
    """The `lambdaflow` entry point of this interpreter's environment."""
    return [sys.executable, "-m", "lambdaflow", *args]


def run_json(name: str, args: list[str], env: Mapping[str, str]) -> dict:
    """Run a command to the end, its stderr (progress, logs) shown as it goes; return the JSON it prints."""
    done = subprocess.run(args, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed with exit code {done.returncode}")
    return json.loads(done.stdout)


@dataclass(frozen=True)
class Finished:
    """How a child ended: exit code, wall time since it was started, peak RSS, what it printed."""

    name: str
    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    """0 unless measured (``peak_rss=True``)."""
    stdout: str

    def json(self) -> dict:
        """The JSON object the child printed last on stdout (ValueError when it printed none)."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            raise ValueError(f"{self.name} printed nothing on stdout (exit code {self.returncode})")
        return json.loads(lines[-1])


class Child:
    """One command in a session of its own; see the module's text."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str] | None,
        log_path: Path,
        *,
        stdout_path: Path | None = None,
        peak_rss: bool = False,
        cwd: Path | None = None,
        own_session: bool = True,
        mark_start: bool = False,
        requests: bool = False,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(os.environ if env is None else env)
        self.log_path = log_path
        self.stdout_path = stdout_path or log_path.with_suffix(".out")
        self.rusage_path = log_path.with_suffix(".maxrss") if peak_rss else None
        self.cwd = cwd
        self.own_session = own_session
        self.mark_start = mark_start
        self.requests = requests  # a pipe to its stdin, for a child that serves requests line by line
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self._read = 0
        self._finished: Finished | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "ab" if self.stdout_path == self.log_path else "wb"
        with self.stdout_path.open(mode) as stdout, self.log_path.open("ab") as stderr:
            if self.mark_start:  # a log that several runs append to: where this one begins
                stderr.write(
                    f"\n--- {datetime.now(UTC).isoformat(timespec='seconds')} started: {' '.join(self.args)}\n".encode()
                )
                stderr.flush()
            self._read = self.stdout_path.stat().st_size
            command = self.args
            if self.rusage_path is not None:
                self.rusage_path.unlink(missing_ok=True)
                command = [sys.executable, "-S", "-c", _LAUNCHER, str(self.rusage_path), *self.args]
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.PIPE if self.requests else subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=self.own_session,
            )
        log.debug("started %s (pid %d)", self.name, self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self._reap(block=False) is None

    def send_signal(self, signum: signal.Signals) -> None:
        """Signal the command (through the launcher, which passes it on), while it runs."""
        if self.running():
            os.kill(self.pid, signum)

    def signal_group(self, signum: signal.Signals) -> None:
        """Signal the child's whole group (the launcher and the command together), while it runs; a
        child started in its parent's session (``own_session=False``) is signalled alone."""
        if self.running():
            _quietly(os.killpg if self.own_session else os.kill, self.pid, signum)

    def kill_9(self) -> Finished:
        """SIGKILL to the whole group, as a crash would end it; nothing is cleaned up."""
        self.signal_group(signal.SIGKILL)
        finished = self._reap(block=True)
        assert finished is not None
        return finished

    def send_line(self, line: str) -> None:
        """One request on the child's stdin (``requests=True``)."""
        assert self.process is not None and self.process.stdin is not None, "started with requests=True"
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def end_requests(self) -> None:
        """Close the child's stdin: a child serving requests exits at its end."""
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()

    def read_line(self, timeout: float = 30.0) -> str:
        """The next line the child prints on stdout; fails when it exits first or prints nothing in time."""
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running()  # asked first: once it has exited, all it printed is in the file
            with self.stdout_path.open("rb") as stdout:
                stdout.seek(self._read)
                line = stdout.readline()
            if line.endswith(b"\n"):
                self._read += len(line)
                return line.decode(errors="replace").rstrip("\n")
            if exited:
                raise RuntimeError(f"{self.name} exited with code {self.result().returncode}; see {self.log_path}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} printed nothing in {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.02)

    def wait(self, timeout: float) -> Finished:
        """Wait for the child to exit by itself; stop it and fail if it takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            finished = self._reap(block=False)
            if finished is not None:
                return finished
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not finish in {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.02)

    def stop(self, grace: float = 30.0) -> Finished:
        """SIGTERM, then SIGKILL to the group after ``grace``; then any descendant that outlived it."""
        descendants: list[ProcStat] = descendants_of(self.pid)
        finished = self._reap(block=False)
        if finished is None:
            _quietly(os.kill, self.pid, signal.SIGTERM)
            self.signal_group(signal.SIGCONT)  # a stopped child acts on SIGTERM only once continued
            deadline = time.monotonic() + grace
            while finished is None and time.monotonic() < deadline:
                time.sleep(0.05)
                finished = self._reap(block=False)
            if finished is None:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", self.name, self.pid, grace)
                self.signal_group(signal.SIGKILL)
                finished = self._reap(block=True)
        stop_leftovers(descendants)
        assert finished is not None  # a blocking reap always finds the process
        return finished

    def result(self) -> Finished:
        """The child's result once it has exited."""
        finished = self._reap(block=True)
        assert finished is not None
        return finished

    def _reap(self, block: bool) -> Finished | None:
        process = self.process
        assert process is not None, "not started"
        if self._finished is not None:
            return self._finished
        pid, status, usage = os.wait4(process.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return None
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        self.end_requests()
        peak_kb = 0
        if self.rusage_path is not None:
            try:
                peak_kb = int(self.rusage_path.read_text())
            except (OSError, ValueError):  # the launcher itself was killed: only its own figure is left
                peak_kb = usage.ru_maxrss
        self._finished = Finished(
            name=self.name,
            returncode=process.returncode,
            wall_seconds=time.monotonic() - self.started,
            peak_rss_mb=peak_kb / 1024,  # kilobytes on Linux
            stdout=self.stdout_path.read_bytes()[self._read :].decode(errors="replace"),
        )
        return self._finished


def run(
    name: str, args: list[str], env: Mapping[str, str] | None, log_path: Path, timeout: float, **options
) -> Finished:
    """Run a child to the end; fail with the end of its log when it exits non-zero."""
    finished = Child(name, args, env, log_path, **options).start().wait(timeout)
    if finished.returncode != 0:
        raise RuntimeError(f"{name} exited with code {finished.returncode}; the end of its log:\n" + tail(log_path))
    return finished


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _quietly(send, pid: int, signum: signal.Signals) -> None:
    try:
        send(pid, signum)
    except ProcessLookupError:
        pass
