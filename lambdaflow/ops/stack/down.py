"""`make down`: stop exactly what stack.json records, its groups first, then what outlived them."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from lambdaflow.ops.procfs import ProcStat, kill_quietly, running_processes, same_process, stop_leftovers, wait_until
from lambdaflow.ops.stack.config import STOP_SECONDS, STOP_SECONDS_DEFAULT, StackConfig, StackError
from lambdaflow.ops.stack.records import Recorded, StackFile, carries_stack_id, exclusive

log = logging.getLogger("lambdaflow.stack")


def down(config: StackConfig) -> dict[str, Any]:
    """Stop what stack.json records, and nothing else; idempotent."""
    with exclusive(config):
        stack = StackFile.read(config.stack_file)
        if stack is None:
            log.info("nothing to stop: no stack is recorded in %s", config.stack_file)
            return {"stopped": [], "stack_file": str(config.stack_file)}
        stopped = stop_all(stack)
        left = stack.alive()
        if left:
            raise StackError("still running after SIGKILL: " + ", ".join(f"{s.name} (pid {s.pid})" for s in left))
        config.stack_file.unlink(missing_ok=True)
    return {"stopped": stopped, "stack_file": str(config.stack_file)}


def stop_all(stack: StackFile) -> list[dict[str, Any]]:
    """Everything but the broker first (the archiver publishes its last batch through it), then the broker."""
    first = [s for s in reversed(stack.services) if s.name != "broker"]
    last = [s for s in stack.services if s.name == "broker"]
    strays: dict[int, ProcStat] = {}
    outcomes = _stop_services(first, strays) + _stop_services(last, strays)
    _stop_strays(list(strays.values()), stack.stack_id)
    return outcomes


def _stop_services(services: list[Recorded], strays: dict[int, ProcStat]) -> list[dict[str, Any]]:
    """SIGTERM each service's process group, wait, and SIGKILL the groups still there.

    Adds to ``strays`` the processes seen leaving the groups meanwhile.
    """
    if not services:
        return []
    strays.update(_left_their_group(services, running_processes()))
    outcomes = {s.name: _signal(s, signal.SIGTERM) for s in services}
    grace = max(STOP_SECONDS.get(s.name, STOP_SECONDS_DEFAULT) for s in services)

    def all_stopped() -> bool:
        processes = running_processes()
        strays.update(_left_their_group(services, processes))
        return not any(s.members(processes) for s in services)

    if not wait_until(all_stopped, grace):
        for service in services:
            if service.members():
                log.warning(
                    "%s (group %d) still runs %.0f s after SIGTERM; sending SIGKILL", service.name, service.pgid, grace
                )
                outcomes[service.name] = _signal(service, signal.SIGKILL)
        wait_until(all_stopped, 10.0)
    for service in services:
        log.info("%s (pid %d): %s", service.name, service.pid, outcomes[service.name])
    return [{"name": s.name, "pid": s.pid, "pgid": s.pgid, "stopped_by": outcomes[s.name]} for s in services]


def _signal(service: Recorded, signum: signal.Signals) -> str:
    """Signal the service's group when it is provably the one ``up`` started; say what was done."""
    leader = service.leader()
    if leader == "other":
        log.warning(
            "pid %d is no longer %s (another process has its number); leaving it alone", service.pid, service.name
        )
        return "not ours"
    if not service.members():
        return "already stopped"
    if leader == "ours":
        try:
            os.killpg(service.pgid, signum)
        except ProcessLookupError:  # the last of the group exited just now
            return "already stopped"
    else:  # the leader is gone: signal what is left of its group, process by process
        for member in service.members():
            kill_quietly(member.pid, signum)
    return signum.name


def _left_their_group(services: list[Recorded], processes: list[ProcStat]) -> dict[int, ProcStat]:
    """Descendants of the services' groups that now lead groups of their own (Airflow's task runners).

    Seen while their parents still run, so that they can be stopped once the
    parents are gone and nothing links them to the stack any more.
    """
    pgids = {s.pgid for s in services if s.leader() != "other"}
    children: dict[int, list[ProcStat]] = {}
    for process in processes:
        children.setdefault(process.ppid, []).append(process)
    found: dict[int, ProcStat] = {}
    todo = [p for p in processes if p.pgid in pgids]
    while todo:
        for child in children.get(todo.pop().pid, []):
            if child.pgid not in pgids and child.pid not in found:
                found[child.pid] = child
                todo.append(child)
    return found


def _stop_strays(seen: list[ProcStat], stack_id: str) -> None:
    """Stop what outlived the groups, once all are down: processes seen leaving them, and any other
    process still carrying the stack id."""
    marked = [p for p in running_processes() if p.pid != os.getpid() and carries_stack_id(p.pid, stack_id)]
    strays = [p for p in {p.pid: p for p in [*seen, *marked]}.values() if same_process(p)]
    if not strays:
        return
    log.warning(
        "stopping %d processes the stack started outside its groups: %s", len(strays), sorted(p.pid for p in strays)
    )
    stop_leftovers(strays, grace=10.0, settle=0.0)
