"""Child processes the benchmark starts, measures and stops by their own PID.

Peak RSS: Linux carries a process's peak RSS across ``exec`` from the memory
it had before, and a child spawned by this process starts from this
process's memory (hundreds of MB once it has drawn a million events), so
``wait4`` on a direct child overstates it, and ``RUSAGE_CHILDREN`` keeps the
largest of every child reaped so far. Each command therefore runs under a
tiny launcher (``python -S``, a few MB) that spawns it, forwards signals to
it, reaps it with ``wait4`` and writes its peak RSS to a file. Output goes to
files, not pipes, so a chatty child never blocks on a full pipe.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lambdaflow.bench")


@dataclass(frozen=True)
class Finished:
    """How a child ended: exit code, wall time since it was spawned, peak RSS, what it printed."""

    name: str
    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    stdout: str


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


def bench_command(*args: str) -> list[str]:
    """A command of the benchmark's own child entry points (bench.child)."""
    return [sys.executable, "-m", "bench.child", *args]


class Child:
    """One command in a session of its own, under the launcher, so that nothing it starts outlives
    :meth:`stop`. Signals meant for the command itself go to the launcher, which passes them on;
    :meth:`signal_group` reaches both (SIGSTOP cannot be passed on)."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.stdout_path = logs / f"{name}.out"
        self.log_path = logs / f"{name}.log"
        self.rusage_path = logs / f"{name}.maxrss"
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self._finished: Finished | None = None

    def start(self) -> Child:
        self.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as stdout, self.log_path.open("ab") as stderr:
            self.started = time.monotonic()
            self.rusage_path.unlink(missing_ok=True)
            launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(self.rusage_path), *self.args]
            self.process = subprocess.Popen(
                launcher, env=self.env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
            )
        log.debug("started %s (pid %d)", self.name, self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal_group(self, signum: signal.Signals) -> None:
        """Signal the launcher and the command together, while they still run."""
        if self.running():
            os.killpg(self.pid, signum)

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None and self._reap(block=False) is None

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
        """SIGTERM, then SIGKILL after ``grace``; then any descendant that outlived it, by PID."""
        descendants = descendants_of(self.pid)
        finished = self._reap(block=False)
        if finished is None:
            _signal(self.pid, signal.SIGTERM)
            _group_signal(self.pid, signal.SIGCONT)  # a stopped child acts on SIGTERM only once continued
            deadline = time.monotonic() + grace
            while finished is None and time.monotonic() < deadline:
                time.sleep(0.05)
                finished = self._reap(block=False)
            if finished is None:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", self.name, self.pid, grace)
                _group_signal(self.pid, signal.SIGKILL)
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
        assert process is not None
        if self._finished is not None:
            return self._finished
        pid, status, usage = os.wait4(process.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return None
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        try:
            peak_kb = int(self.rusage_path.read_text())
        except (OSError, ValueError):  # the launcher itself was killed: only its own figure is left
            peak_kb = usage.ru_maxrss
        self._finished = Finished(
            name=self.name,
            returncode=process.returncode,
            wall_seconds=time.monotonic() - self.started,
            peak_rss_mb=peak_kb / 1024,  # kilobytes on Linux
            stdout=self.stdout_path.read_text(errors="replace"),
        )
        return self._finished


def run(name: str, args: list[str], env: Mapping[str, str], logs: Path, timeout: float) -> Finished:
    """Run a child to the end; fail with the tail of its log when it exits non-zero."""
    finished = Child(name, args, env, logs).start().wait(timeout)
    if finished.returncode != 0:
        raise RuntimeError(
            f"{name} exited with code {finished.returncode}; the end of its log:\n" + tail(logs / f"{name}.log")
        )
    return finished


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# processes, as /proc shows them


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot at which ``pid`` started: with the PID it names one process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _parent_of(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def descendants_of(root: int) -> list[tuple[int, int]]:
    """Every running descendant of ``root`` as (pid, start time)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            started = _start_time(child)
            if started is not None:
                found.append((child, started))
                todo.append(child)
    return found


def stop_leftovers(processes: list[tuple[int, int]], grace: float = 10.0) -> None:
    """Stop the processes still running that are the very ones recorded (same PID and start time).

    They get two seconds to go by themselves first: a helper such as
    multiprocessing's resource tracker exits once its parent has.
    """

    def alive() -> list[tuple[int, int]]:
        return [(pid, started) for pid, started in processes if _start_time(pid) == started]

    deadline = time.monotonic() + 2.0
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive()
    if not left:
        return
    log.info("stopping %d processes left behind: %s", len(left), [pid for pid, _ in left])
    for pid, _ in left:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, _ in alive():
        _signal(pid, signal.SIGKILL)


def _group_signal(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _signal(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
