"""`lambdaflow archive --verify` against a real broker: the raw store checked against the log."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import polars as pl
from deltalake import DeltaTable, write_deltalake

from lambdaflow.core.raw_store import RawStore
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce


def reports(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_verify_passes_on_an_archive_and_finds_lost_and_doubled_events(
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

    # Damage the table as only something other than the archiver could: drop some of partition 1's
    # events, and add the events of one of partition 2's files a second time, under another day.
    store = RawStore(data_dir, topic)
    DeltaTable(store.tables.events_uri).delete("kafka_partition = 1 and kafka_offset < 50")
    snapshot = store.snapshot()
    ranges = snapshot.file_ranges(snapshot.event_dates())
    doubled = next(r for day_ranges in ranges.values() for r in day_ranges if r.partition == 2)
    again = pl.read_parquet(doubled.uri).with_columns(event_date=pl.lit(date(2000, 1, 1)))
    write_deltalake(DeltaTable(store.tables.events_uri), again, mode="append")

    broken = kafka_cli("archive", "--verify")
    assert broken.exit_code == 1
    assert broken.stderr.strip().splitlines()[-1] == (
        "lambdaflow: error: the raw store differs from the log on partitions [1, 2]: see the report above"
    )
    by_partition = {r["partition"]: r for r in reports(broken)}
    assert by_partition[0]["ok"]
    assert by_partition[1]["events"]["missing"] > 0 and by_partition[1]["events"]["duplicated"] == 0
    assert by_partition[2]["events"]["duplicated"] > 0 and by_partition[2]["events"]["missing"] == 0
