"""The benchmark's children: lambdaflow's one child-process wrapper (:mod:`lambdaflow.ops.processes`),
each child with its peak RSS measured and its output in the section's log folder."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path

from lambdaflow.ops import processes
from lambdaflow.ops.processes import Child, Finished, lambdaflow_command


def bench_command(*args: str) -> list[str]:
    """A command of the benchmark's own child entry points (bench.child)."""
    return [sys.executable, "-m", "bench.child", *args]


def bench_child(name: str, args: list[str], env: Mapping[str, str], logs: Path) -> Child:
    """A child whose stderr goes to ``logs/<name>.log`` and stdout to ``logs/<name>.out``."""
    return Child(name, args, env, logs / f"{name}.log", peak_rss=True)


def run(name: str, args: list[str], env: Mapping[str, str], logs: Path, timeout: float) -> Finished:
    """Run a child to the end; fail with the end of its log when it exits non-zero."""
    return processes.run(name, args, env, logs / f"{name}.log", timeout, peak_rss=True)


SESSION_SECONDS = 7.0
"""The workers' 6 s session timeout, and a margin."""


def settle() -> None:
    """Wait out the previous run's membership before a worker joins its group again: the embedded
    broker notices that a worker left its group only after the session timeout, and a run that starts
    sooner waits for that in its join. Every run started after this pause joins alike."""
    time.sleep(SESSION_SECONDS)


def worker_env(base: Mapping[str, str], bootstrap: str, topic: str, data_dir: Path) -> dict[str, str]:
    """``base`` with lambdaflow pointed at ``bootstrap``, ``topic`` and ``data_dir``."""
    return {**base, "KAFKA_BOOTSTRAP": bootstrap, "LAMBDAFLOW_TOPIC": topic, "LAMBDAFLOW_DATA_DIR": str(data_dir)}


def stream_until_idle(name: str, env: Mapping[str, str], logs: Path) -> dict:
    """`lambdaflow stream --until-idle` to the end, after :func:`settle`: its summary, wall time and peak RSS."""
    settle()
    done = run(name, lambdaflow_command("stream", "--until-idle"), env, logs, timeout=3600)
    return {**done.json(), "wall_seconds": round(done.wall_seconds, 3), "peak_rss_mb": round(done.peak_rss_mb, 1)}
