"""The `lambdaflow` command itself: help, errors, and where output goes."""

from __future__ import annotations

import json

import pytest

SUBCOMMANDS = ["broker", "produce", "archive", "stream", "batch", "maintain", "query", "reconcile", "status"]


def test_top_level_help_lists_the_subcommands(cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: lambdaflow [OPTIONS] COMMAND")
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(cli, name: str) -> None:
    result = cli(name, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: lambdaflow {name} [OPTIONS]")
    assert result.stderr == ""


def test_unknown_subcommand_is_a_usage_error(cli) -> None:
    result = cli("archiv")
    assert result.exit_code == 2
    assert "No such command 'archiv'" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "LAMBDAFLOW_TOPIC",
            "bad topic!",
            "LAMBDAFLOW_TOPIC='bad topic!' is not a Kafka topic name (1-249 of the characters A-Z a-z 0-9 . _ -)",
        ),
        ("KAFKA_BOOTSTRAP", "localhost", "KAFKA_BOOTSTRAP='localhost' is not a list of host:port, e.g. 127.0.0.1:9092"),
        ("LAMBDAFLOW_PARTITIONS", "0", "LAMBDAFLOW_PARTITIONS='0' must be a whole number from 1 to 10000"),
        (
            "LAMBDAFLOW_ARCHIVE_ROLL_MB",
            "inf",
            "LAMBDAFLOW_ARCHIVE_ROLL_MB='inf' must be a number above 0 and at most 4096",
        ),
        (
            "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES",
            "nan",
            "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES='nan' must be a number of minutes from 0 to 10080",
        ),
        (
            "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES",
            "1e12",
            "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES='1e12' must be a number of minutes from 0 to 10080",
        ),
        ("LAMBDAFLOW_RECONCILE_THRESHOLD", "²", "LAMBDAFLOW_RECONCILE_THRESHOLD='²' must be a whole number, 0 or more"),
    ],
)
def test_bad_environment_gets_one_clear_line(cli, variable: str, value: str, message: str) -> None:
    cli.env[variable] = value
    result = cli("produce", "--days", "0")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"lambdaflow: error: {message}"]
    assert result.stdout == ""


def test_maintain_reports_each_raw_table_and_refuses_a_period_under_an_hour(cli) -> None:
    from lambdaflow.core.config import Settings
    from lambdaflow.core.raw_tables import RawTables, ResumePoint
    from tests.test_raw_tables import batch

    settings = Settings.from_env(cli.env)
    nothing = cli("maintain")
    assert nothing.exit_code == 0 and nothing.stdout == ""  # nothing archived yet: no table
    events, rejects = batch(0, 0, 20)
    RawTables(settings.storage, settings.topic).begin(0, ResumePoint(0, 0)).commit(ResumePoint(0, 21), events, rejects)

    result = cli("maintain", "--dry-run")
    assert result.exit_code == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["table"], r["removed_files"], r["dry_run"]) for r in reports] == [
        ("events", 0, True),
        ("dead_letter", 0, True),
    ]
    refused = cli("maintain", "--keep-hours", "0")
    assert refused.exit_code == 2 and "--keep-hours" in refused.stderr
