"""The short version of `make chaos`, and its verifier held to account.

The scenario runs as `make chaos` does, in a process of its own with its own
broker, with fewer kills, less time and fewer events. Its seed is fixed here so
that a failure in CI can be replayed as it was; `make chaos` draws a new one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chaos.run import METRICS, Scenario, tally_offsets, tally_served

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(
    r"chaos: (\d+) kills, (\d+) events, (\d+) lost, (\d+) duplicated, (\d+) hours served twice or never"
)


@pytest.mark.slow
def test_a_short_chaos_run_loses_and_duplicates_nothing(tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaos",
            "--seed",
            "20261127",
            "--duration",
            "60",
            "--kills",
            "3",
            "--events-per-day",
            "3000",
        ],
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("chaos: seed 20261127 (replay: make chaos SEED=20261127)")
    found = LAST_LINE.fullmatch(lines[-1])
    assert found, done.stdout + done.stderr[-5000:]
    kills, events, lost, duplicated, misserved = map(int, found.groups())
    assert (lost, duplicated, misserved) == (0, 0, 0) and done.returncode == 0, done.stderr[-8000:]
    assert kills == 6 and events > 9_000
    for fault in (
        "kill archiver",
        "kill stream worker",
        "second archiver",
        "second stream worker",
        "pause broker",
        "backfill",
        "batch for today",
        "batch for today, no day built",
        "batch for today, the speed layer stopped",
        "two batches for today at once",
    ):
        assert f": {fault}" in done.stderr
    assert "served hours checked at" in done.stderr and " 0 moments" not in done.stderr
    if datetime.now(UTC).hour >= 2:  # before that, no hour of today may be complete yet
        assert "build today: built" in done.stderr


def test_the_schedule_is_the_seeds_and_has_every_fault() -> None:
    import random

    scenario = Scenario(seed=5, duration=600, kills=22, events_per_day=1)
    first, second = scenario.actions(random.Random(5)), scenario.actions(random.Random(5))
    assert first == second != scenario.actions(random.Random(6))
    assert first.count("kill archiver") == first.count("kill stream worker") == 22
    assert first.count("second stream worker") % 2 == 0 and first.count("second archiver") % 2 == 0
    assert {
        "pause broker",
        "build a day",
        "rebuild a day",
        "backfill",
        "batch for today",
        "batch for today, the speed layer stopped",
        "two batches for today at once",
    } <= set(first)
    assert first[0] == "batch for today, no day built"


def test_the_verifier_counts_what_is_lost_doubled_or_misfiled() -> None:
    valid, rejected = {(0, 0), (0, 1), (1, 0)}, {(0, 2)}
    assert tally_offsets(valid, rejected, [(0, 0), (0, 1), (1, 0)], [(0, 2)]) == (0, 0, [])
    lost, duplicated, problems = tally_offsets(valid, rejected, [(0, 0), (0, 0), (1, 0)], [])
    assert (lost, duplicated, problems) == (2, 1, [])
    assert tally_offsets(valid, rejected, [(0, 0), (0, 1), (1, 0), (0, 2)], [(0, 2)])[2]  # a reject archived

    row = dict.fromkeys(METRICS, 1)
    assert tally_served({("d",): row}, {("d",): row}, "day") == (0, 0, [])
    more = {**row, "events": 3}
    lost, duplicated, problems = tally_served({("d",): row, ("e",): row}, {("d",): more}, "day")
    assert (lost, duplicated) == (1, 2) and len(problems) == 2
    other = {**row, "new_users": 2}
    assert tally_served({("d",): row}, {("d",): other}, "day")[2]  # every metric must be exact
