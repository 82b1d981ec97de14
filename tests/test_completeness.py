"""A day is complete when every partition of the topic, as the broker reports it, has been archived
past it (invariant 6): not the partitions LAMBDAFLOW_PARTITIONS names, which only creates topics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from lambdaflow.kafka.clients import ensure_topic
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.cli_helpers import TopicWorld


def test_a_topic_with_more_partitions_than_the_setting_waits_for_every_one(kafka_bootstrap, tmp_path) -> None:
    world = TopicWorld(kafka_bootstrap, tmp_path)  # LAMBDAFLOW_PARTITIONS unset: 3
    ensure_topic(kafka_bootstrap, world.topic, 4)
    midnight = datetime.combine(world.today, datetime.min.time(), UTC)
    yesterday = str(world.today - timedelta(days=1))
    produce(kafka_bootstrap, world.topic, 4, generator.Options(days=1, events_per_day=2_000, seed=6, until=midnight))
    archived = world.lambdaflow("archive", "--until-idle")
    assert archived.exit_code == 0, archived.stderr[-3000:]

    status = json.loads(world.lambdaflow("status").stdout)
    assert [entry["partition"] for entry in status["partitions"]] == [0, 1, 2, 3]
    assert all(entry["archiver"]["lag"] == 0 for entry in status["partitions"])

    # Partition 3's archiver has not reported yet (behind, or not started): yesterday is not complete.
    (world.data_dir / "archiver" / world.topic / "status-3.json").unlink()
    refused = world.lambdaflow("batch", "--date", yesterday)
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[-1].startswith(f"lambdaflow: error: day {yesterday} is not complete yet")
    assert "partition 3: not archived yet" in refused.stderr
    assert not (world.data_dir / "airflow").exists()  # refused before Airflow's database is made
    assert [entry["partition"] for entry in json.loads(world.lambdaflow("status").stdout)["partitions"]] == [0, 1, 2, 3]
