"""cProfile for a target the benchmark misses: where the time of a command goes.

py-spy is not installed, so a command is run again under ``python -m
cProfile`` (which slows Python code, not C code: read the shares as
relative). Time spent blocked (on locks, in select, asleep) is counted apart,
and the shares are of the remaining, busy time. The summary keeps named
functions of interest (their cumulative time, callees included) and the
functions with the most time of their own.
"""

from __future__ import annotations

import pstats
import sys
from pathlib import Path

WAITING = (
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'acquire' of '_thread.RLock' objects>",
    "<built-in method time.sleep>",
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'select' of 'select.epoll' objects>",
    "<built-in method select.select>",
)


def profiled(args: list[str], output: Path) -> list[str]:
    """``args`` (a ``python -m module ...`` command) run under cProfile, writing its stats to ``output``."""
    if args[:2] != [sys.executable, "-m"]:
        raise ValueError(f"not a python -m command: {args}")
    return [sys.executable, "-m", "cProfile", "-o", str(output), *args[1:]]


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
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]  # the table, undocumented
    total = sum(own for _, _, own, _, _ in stats.values()) or 1.0
    waiting = sum(own for key, (_, _, own, _, _) in stats.items() if key[2] in WAITING)
    busy = max(total - waiting, 1e-9)
    focused = {}
    for label, name in focus.items():
        matches = [
            (cumulative, key)
            for key, (_, _, _, cumulative, _) in stats.items()
            if f"{Path(key[0]).stem}.{key[2]}" == name
        ]
        if matches:
            seconds = max(matches)[0] - (waiting if label == waits_in else 0.0)
            focused[label] = {"seconds": round(max(seconds, 0.0), 2), "share": round(max(seconds, 0.0) / busy, 3)}
    own = sorted(((own, key) for key, (_, _, own, _, _) in stats.items() if key[2] not in WAITING), reverse=True)
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
