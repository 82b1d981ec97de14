"""What a benchmark run leaves behind: summary.json, report.md with its PNG plots, and a table on stdout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bench.core import Row, Section
from lambdaflow.core.output import emit

log = logging.getLogger("lambdaflow.bench")


def _verdict(row: Row) -> str:
    if row.met is None:
        return "reported (no target)"
    return "met" if row.met else "MISSED"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def write(out: Path, header: dict, sections: list[Section]) -> dict:
    """Draw the plots, then write summary.json and report.md into ``out``; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict[int, list[str]] = {}
    for section in sections:
        for plot in section.plots:
            try:
                drawn.setdefault(section.number, []).append(plot(out).name)
            except Exception as error:  # a plot is not worth losing the numbers for
                log.error("section %d: a plot failed: %s", section.number, error)
    rows = [row for section in sections for row in section.rows]
    summary = {
        **header,
        "rows": [row.as_dict() for row in rows],
        "missed": [row.id for row in rows if row.met is False],
        "sections": {
            str(s.number): {
                "title": s.title,
                "seconds": s.seconds,
                "details": s.details,
                "plots": drawn.get(s.number, []),
            }
            for s in sections
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.md").write_text(_markdown(summary, sections, drawn))
    return summary


def print_table(rows: list[dict]) -> None:
    """The short table on stdout: one line per row."""
    emit(
        [
            {
                "what": r["what"],
                "figure": f"{_number(r['figure'])} {r['unit']}",
                "peer": _number(r["peer_figure"]),
                "ratio": _number(r["ratio"]),
                "target": r["target"] or "",
                "result": "reported" if r["met"] is None else ("met" if r["met"] else "MISSED"),
            }
            for r in rows
        ],
        "table",
    )


def _markdown(summary: dict, sections: list[Section], drawn: dict[int, list[str]]) -> str:
    machine, versions = summary["machine"], summary["versions"]
    lines = [
        f"# lambdaflow benchmark{' (quick mode: small sizes, not for judging targets)' if summary['quick'] else ''}",
        "",
        f"`{summary.get('command', 'python -m bench')}`, run on {summary['date']} in "
        f"{summary['duration_seconds'] / 60:.1f} minutes. Machine: "
        f"{machine['cores']} cores ({machine['cpu']}), {machine['memory_gb']} GB memory, Linux {machine['kernel']}; "
        f"load average {machine['load_average']} at the start and {summary['load_average_at_end']} at the end "
        "(other work on the machine slows every figure; the comparisons alternate A and B to share the noise).",
        "",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items() if version) + ".",
        "",
        "## Summary",
        "",
        "| # | what | figure | ceiling or peer | ratio | target | result |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for section in sections:
        for row in section.rows:
            peer = f"{row.peer}: {_number(row.peer_figure)}" if row.peer_figure is not None else row.peer
            lines.append(
                f"| {section.number} | {row.what} | {_number(row.figure)} {row.unit} | {peer} | "
                f"{_number(row.ratio)} | {row.target or '—'} | {_verdict(row)} |"
            )
    for section in sorted(sections, key=lambda s: s.number):
        took = f"{section.seconds:.0f} s" if section.seconds < 120 else f"{section.seconds / 60:.1f} minutes"
        lines += ["", f"## {section.number}. {section.title}", "", section.text, "", f"*This section took {took}.*"]
        lines += [f"\n![{name}]({name})" for name in drawn.get(section.number, [])]
    lines += ["", "## Closing note", ""]
    missed = [(s.number, r) for s in sections for r in s.rows if r.met is False]
    if missed:
        lines.append(f"{len(missed)} target(s) missed:")
        lines.append("")
        lines += [f"- **{r.what}** ({n}): {_number(r.figure)} {r.unit} against {r.target}. {r.why}." for n, r in missed]
    else:
        lines.append("Every target was met.")
    unjudged = [r for s in sections for r in s.rows if r.met is None]
    if unjudged:
        named = "; ".join(f"{r.what} ({r.why})" if r.why else r.what for r in unjudged)
        lines += ["", f"Rows without a target, so they cannot fail: {named}."]
    return "\n".join(lines) + "\n"
