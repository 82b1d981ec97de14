"""cProfile for a target the benchmark misses: where the time of a command goes.

py-spy is not installed, so a command is run again under cProfile, every
thread of it (``python -m bench.profiling OUT -m MODULE ...``: the main
thread's stats to OUT, the other threads' to OUT.threads; cProfile slows
Python code, not C code: read the shares as relative). Time spent blocked (on
locks, in select, asleep) is counted apart, and the shares are of the
remaining, busy time, in all threads. The summary keeps named functions of
interest (their cumulative time, callees included) and the functions with the
most time of their own.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
from pathlib import Path

WAITING = (
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'acquire' of '_thread.RLock' objects>",
    "<built-in method time.sleep>",
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'select' of 'select.epoll' objects>",
    "<built-in method select.select>",
    "<method 'get' of '_queue.SimpleQueue' objects>",  # a thread pool's idle thread
)


def profiled(args: list[str], output: Path) -> list[str]:
    """``args`` (a ``python -m module ...`` command) run under cProfile, writing its stats to ``output``
    (and its other threads' to ``output``.threads)."""
    if args[:2] != [sys.executable, "-m"]:
        raise ValueError(f"not a python -m command: {args}")
    return [sys.executable, "-m", "bench.profiling", str(output), *args[1:]]


def _threads_file(output: Path) -> Path:
    return output.with_name(output.name + ".threads")


def _run_profiled(output: Path, module: str, args: list[str]) -> None:
    """Run ``module`` as ``python -m`` would, each thread under a profiler of its own."""
    others: list[cProfile.Profile] = []

    def profile_this_thread(*_: object) -> None:  # a new thread's first event: profile it from here on
        profile = cProfile.Profile()
        others.append(profile)
        profile.enable()

    threading.setprofile(profile_this_thread)
    main = cProfile.Profile()
    sys.argv = [module, *args]
    main.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        main.disable()
        threading.setprofile(None)  # new threads: no hook
        main.dump_stats(output)
        if others:
            merged = pstats.Stats(others[0])
            for profile in others[1:]:
                merged.add(profile)
            merged.dump_stats(_threads_file(output))


def _label(key: tuple[str, int, str]) -> str:
    path, line, function = key
    if path == "~":
        return function
    return f"{'/'.join(Path(path).parts[-2:])}:{line}({function})"


def summarize(stats_file: Path, focus: dict[str, str], waits_in: str | None = None, keep: int = 6) -> dict:
    """Busy seconds and share for each ``focus`` entry (label -> ``module.function``; the match with the
    most time wins) and the ``keep`` busiest functions by their own time.

    Blocked time is left out of the shares; it is taken off the ``waits_in``
    entry (a consumer blocks inside its poll), and off nothing else.
    """
    tables = [_table(path) for path in (stats_file, _threads_file(stats_file)) if path.exists()]
    total = sum(own for table in tables for _, _, own, _, _ in table.values()) or 1.0
    waits = [sum(own for key, (_, _, own, _, _) in table.items() if key[2] in WAITING) for table in tables]
    waiting = sum(waits)
    busy = max(total - waiting, 1e-9)
    focused = {}
    for label, name in focus.items():
        matches = [
            (cumulative - (waits[number] if label == waits_in else 0.0), key)
            for number, table in enumerate(tables)
            for key, (_, _, _, cumulative, _) in table.items()
            if f"{Path(key[0]).stem}.{key[2]}" == name
        ]
        if matches:
            seconds = max(max(matches)[0], 0.0)
            focused[label] = {"seconds": round(seconds, 2), "share": round(seconds / busy, 3)}
    own = sorted(
        ((own, key) for table in tables for key, (_, _, own, _, _) in table.items() if key[2] not in WAITING),
        reverse=True,
    )
    return {
        "total_seconds": round(total, 2),
        "waiting_seconds": round(waiting, 2),
        "busy_seconds": round(busy, 2),
        "focus": focused,
        "own_time": [
            {"function": _label(key), "seconds": round(seconds, 2), "share": round(seconds / busy, 3)}
            for seconds, key in own[:keep]
        ],
    }


def _table(path: Path) -> dict:
    return pstats.Stats(str(path)).stats  # type: ignore[attr-defined]  # the table, undocumented


def describe(summary: dict) -> str:
    """The focus shares in one line, for a row's `why`."""
    return "of its busy time, " + ", ".join(f"{label} {e['share']:.0%}" for label, e in summary["focus"].items())


def markdown(summary: dict, title: str) -> list[str]:
    lines = [
        f"{title}: {summary['total_seconds']:.1f} s profiled, {summary['waiting_seconds']:.1f} s of it "
        f"blocked (the group join, waiting for fetches), {summary['busy_seconds']:.1f} s busy.",
        "",
        "| part | busy s (with callees) | share of busy |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {e['seconds']:.1f} | {e['share']:.0%} |" for label, e in summary["focus"].items()]
    lines += ["", "| most time of its own | s | share of busy |", "|---|---:|---:|"]
    lines += [f"| `{e['function']}` | {e['seconds']:.1f} | {e['share']:.0%} |" for e in summary["own_time"]]
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: python -m bench.profiling OUTPUT -m MODULE [ARGS...]")
    _run_profiled(Path(sys.argv[1]), sys.argv[3], sys.argv[4:])
