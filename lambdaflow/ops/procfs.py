"""Processes as /proc shows them: who they are, their group and session, and since when.

A PID with its start time names one process for the machine's uptime, so a number the
kernel gave to another process since is never mistaken for the one started."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


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
    return _nul_separated(pid, "cmdline")


def proc_environ(pid: int) -> list[str] | None:
    """The environment the process started with (``NAME=value`` each), as far as /proc still shows it."""
    return _nul_separated(pid, "environ")


def _nul_separated(pid: int, name: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/{name}").read_bytes()
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


def same_process(stat: ProcStat) -> bool:
    """Still running, and still that process: the number was not given to another since."""
    now = proc_stat(stat.pid)
    return now is not None and now.running and now.started == stat.started


def kill_quietly(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.25) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def descendants_of(pid: int, processes: list[ProcStat] | None = None) -> list[ProcStat]:
    """Every running descendant of ``pid``: its children, theirs, and so on."""
    children: dict[int, list[ProcStat]] = {}
    for process in running_processes() if processes is None else processes:
        children.setdefault(process.ppid, []).append(process)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def stop_leftovers(processes: list[ProcStat], grace: float = 10.0, settle: float = 2.0) -> None:
    """Stop those of ``processes`` still running that are the very ones recorded (same PID and start
    time): SIGTERM, then SIGKILL after ``grace``. They get ``settle`` seconds to go by themselves
    first: a helper such as multiprocessing's resource tracker exits once its parent has."""
    wait_until(lambda: not any(same_process(p) for p in processes), settle, every=0.05)
    left = [p for p in processes if same_process(p)]
    if not left:
        return
    log.info("stopping %d processes left behind: %s", len(left), sorted(p.pid for p in left))
    for process in left:
        kill_quietly(process.pid, signal.SIGTERM)
    if not wait_until(lambda: not any(same_process(p) for p in left), grace, every=0.1):
        for process in left:
            if same_process(process):
                kill_quietly(process.pid, signal.SIGKILL)
