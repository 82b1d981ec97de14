"""What `up` started, as ``<data>/run/stack.json`` records it, and which processes are still its own."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from lambdaflow.core.files import read_json, replace_json
from lambdaflow.ops.procfs import ProcStat, proc_cmdline, proc_environ, proc_stat, running_processes
from lambdaflow.ops.stack.config import STACK_ID_VARIABLE, StackConfig, StackError


def carries_stack_id(pid: int, stack_id: str) -> bool:
    """Whether ``up`` started the process: it puts the stack id in every service's environment.

    Only a hint: a process that rewrites its title, as Airflow's components do,
    may overwrite the environment /proc shows.
    """
    return f"{STACK_ID_VARIABLE}={stack_id}" in (proc_environ(pid) or [])


@dataclass(frozen=True)
class Recorded:
    """One service as stack.json records it: the leader of its own session and process group."""

    name: str
    pid: int
    pgid: int
    command: list[str]
    started: int
    log: str

    def leader(self) -> str:
        """``ours`` while the recorded PID is still the process ``up`` started (same start time and
        command line; a zombie keeps its start time), ``gone`` once it has been reaped, ``other``
        when the number now belongs to another process."""
        stat = proc_stat(self.pid)
        if stat is None:
            return "gone"
        if stat.started != self.started:
            return "other"
        if stat.running and proc_cmdline(self.pid) != self.command:
            return "other"
        return "ours"

    def members(self, processes: list[ProcStat] | None = None) -> list[ProcStat]:
        """The running processes of the service's group.

        While the leader is ours, or gone (a group outlives its leader and its
        number cannot be reused while any process still holds it), every
        process of the group in the leader's session that started after it is
        the service's.
        """
        if self.leader() == "other":
            return []
        return [
            p
            for p in (processes if processes is not None else running_processes())
            if p.pgid == self.pgid and p.sid == self.pgid and p.started >= self.started
        ]

    def is_alive(self) -> bool:
        return bool(self.members())


@dataclass
class StackFile:
    path: Path
    stack_id: str
    data_dir: str
    started_at: str
    services: list[Recorded]
    urls: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> StackFile | None:
        document = read_json(path)
        if not document:
            return None
        return cls(
            path=path,
            stack_id=document["stack_id"],
            data_dir=document["data_dir"],
            started_at=document["started_at"],
            services=[Recorded(**service) for service in document["services"]],
            urls=document.get("urls", {}),
        )

    def write(self) -> None:
        document = {k: v for k, v in asdict(self).items() if k != "path"}
        replace_json(self.path, document)

    def alive(self) -> list[Recorded]:
        return [service for service in self.services if service.is_alive()]


@contextmanager
def exclusive(config: StackConfig) -> Iterator[None]:
    """One `up` or `down` at a time per data directory."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    with (config.run_dir / "stack.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `make up` or `make down` is running for {config.settings.data_dir}") from None
        yield
