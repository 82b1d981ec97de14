"""`lambdaflow archive --verify` against a real broker: the raw store checked against the log."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce


def reports(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_verify_passes_on_an_archive_and_finds_a_lost_and_a_doubled_file(
    kafka_cli, kafka_bootstrap, topic, data_dir
) -> None:
    sent = produce(
        kafka_bootstrap,
        topic,
        3,
        generator.Options(
            days=1,
            events_per_day=3_000,
            seed=5,
            until=datetime.now(UTC),
            duplicates=0.05,
            malformed=0.02,
        ),
    )
    nothing = kafka_cli("archive", "--verify")
    assert nothing.exit_code == 1 and "nothing archived" in nothing.stderr
    archived = kafka_cli("archive", "--until-idle")
    assert archived.exit_code == 0, archived.stderr[-3000:]

    clean = kafka_cli("archive", "--verify")
    assert clean.exit_code == 0, clean.stderr[-3000:]
    found = reports(clean)
    assert [r["partition"] for r in found] == [0, 1, 2] and all(r["ok"] for r in found)
    assert sum(r["valid"] for r in found) == sum(r["archived"] for r in found) == sent.messages - sent.malformed
    assert sum(r["rejected"] for r in found) == sum(r["dead_letter"] for r in found) == sent.malformed

    files = sorted((data_dir / "raw" / "events").glob("*/*-0-1-*.parquet"))  # partition 1's files
    files[0].unlink()
    doubled = sorted((data_dir / "raw" / "events").glob("*/*-0-2-*.parquet"))[0]
    other_day = data_dir / "raw" / "events" / "event_date=2000-01-01"
    other_day.mkdir()
    shutil.copy(doubled, other_day / doubled.name)

    broken = kafka_cli("archive", "--verify")
    assert broken.exit_code == 1
    assert broken.stderr.strip().splitlines()[-1] == (
        "lambdaflow: error: the raw store differs from the log on partitions [1, 2]: see the report above"
    )
    by_partition = {r["partition"]: r for r in reports(broken)}
    assert by_partition[0]["ok"]
    assert by_partition[1]["events"]["missing"] > 0 and by_partition[1]["events"]["duplicated"] == 0
    assert by_partition[2]["events"]["duplicated"] > 0 and by_partition[2]["events"]["missing"] == 0
