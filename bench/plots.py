"""PNG plots for the report, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def bars(
    path: Path,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    points: Sequence[Sequence[float]] | None,
    unit: str,
    reference: tuple[float, str] | None = None,
) -> Path:
    """One bar per variant (the median), its repetitions as dots, and an optional target line."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    positions = range(len(labels))
    axes.bar(positions, values, color="#4C72B0", width=0.6)
    for position, repeated in zip(positions, points or [], strict=False):
        axes.scatter([position] * len(repeated), repeated, color="black", s=14, zorder=3)
    if reference is not None:
        axes.axhline(reference[0], color="#C44E52", linestyle="--", label=reference[1])
        axes.legend(loc="best")
    axes.set_xticks(list(positions), labels)
    axes.set_ylabel(unit)
    axes.set_title(title, fontsize=10)
    return _save(plt, figure, path)


def lines(
    path: Path,
    title: str,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    reference: tuple[float, str] | None = None,
) -> Path:
    """Several named (x, y) series on one set of axes."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        if xs and isinstance(xs[0], str):  # labels (days): place them in order, not as parsed dates
            axes.plot(range(len(xs)), ys, marker="o", markersize=3, label=name)
            step = max(1, len(xs) // 10)
            axes.set_xticks(list(range(0, len(xs), step)), list(xs)[::step], rotation=45)
        else:
            axes.plot(xs, ys, marker="o", markersize=3, label=name)
    if reference is not None:
        axes.axhline(reference[0], color="#C44E52", linestyle="--", label=reference[1])
    if log_y:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.legend(loc="best")
    return _save(plt, figure, path)


def distribution(
    path: Path, title: str, samples: dict[str, Sequence[float]], unit: str, reference: tuple[float, str] | None = None
) -> Path:
    """The empirical CDF of each named sample, so medians and tails read off one picture."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, values in samples.items():
        ordered = sorted(values)
        if ordered:
            axes.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=name)
    if reference is not None:
        axes.axvline(reference[0], color="#C44E52", linestyle="--", label=reference[1])
    axes.set_xlabel(unit)
    axes.set_ylabel("share at or below")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="lower right")
    return _save(plt, figure, path)
