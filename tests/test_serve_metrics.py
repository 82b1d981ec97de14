"""`/metrics` follows both workers as events flow: a real broker, a real archiver and stream worker,
and `lambdaflow serve`, each its own process, started here and stopped by its PID. Scraped with
Prometheus's own text parser, every named worker metric moves between two rounds of events."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_helpers import Served, start_serve
from tests.worker_helpers import WorkerProcess

LAYERS = ("archiver", "stream")
PARTITIONS = ("0", "1", "2")


def scrape(served: Served) -> dict[str, dict[tuple, float]]:
    """Sample name -> {labels as a sorted tuple: value}."""
    reply = served.get("/metrics")
    assert reply.status == 200, reply.body
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def per_worker(samples: dict, name: str) -> dict[tuple[str, str], float]:
    return {(dict(k)["layer"], dict(k)["partition"]): v for k, v in samples.get(name, {}).items()}


def log_ends(kafka_cli) -> dict[str, int]:
    """Each partition's end offset on the broker, read apart from the workers."""
    consumer = KafkaConsumer(bootstrap_servers=kafka_cli.env["KAFKA_BOOTSTRAP"])
    try:
        wanted = [TopicPartition(kafka_cli.env["LAMBDAFLOW_TOPIC"], int(p)) for p in PARTITIONS]
        return {str(tp.partition): end for tp, end in consumer.end_offsets(wanted).items()}
    finally:
        consumer.close()


def caught_up_to(served: Served, ends: dict[str, int]) -> Callable[[], dict | None]:
    """A scrape in which every worker has committed the log up to ``ends``. A worker's own lag is not
    enough: it counts from the end offset it last saw, which may be older than the last round."""

    def check() -> dict | None:
        samples = scrape(served)
        offsets = per_worker(samples, "lambdaflow_consumer_offset")
        if any(offsets.get((layer, p), -1) < ends[p] for layer in LAYERS for p in PARTITIONS):
            return None
        return samples

    return check


def wait_for(check: Callable[[], dict | None], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"the metrics did not catch up in {timeout:.0f} s")


def produce(kafka_cli, seed: int) -> None:
    """A day and today's share of events, 2% more of them malformed, one kind after another."""
    done = kafka_cli("produce", "--days", "1", "--events-per-day", "1500", "--seed", str(seed), "--malformed", "0.02")
    assert done.exit_code == 0, done.stderr


def test_every_worker_metric_moves_as_events_flow(kafka_cli, tmp_path) -> None:
    env = {**kafka_cli.env, "LAMBDAFLOW_ARCHIVE_ROLL_SECONDS": "1"}
    workers = [WorkerProcess(command, env, tmp_path / f"{command}.log") for command in ("archive", "stream")]
    served = start_serve(env, tmp_path)
    try:
        produce(kafka_cli, seed=1)
        first = wait_for(caught_up_to(served, log_ends(kafka_cli)))
        produce(kafka_cli, seed=2)
        second = wait_for(caught_up_to(served, log_ends(kafka_cli)))
    finally:
        served.stop()
        for worker in workers:
            worker.terminate()

    grew = [
        "lambdaflow_consumer_offset",
        "lambdaflow_consumer_end_offset",
        "lambdaflow_consumer_messages_total",
        "lambdaflow_consumer_events_total",
        "lambdaflow_micro_batch_seconds_count",
        "lambdaflow_micro_batch_seconds_sum",
        "lambdaflow_commit_seconds_count",
        "lambdaflow_commit_seconds_sum",
        "lambdaflow_last_commit_timestamp_seconds",
    ]
    for name in grew:
        before, after = per_worker(first, name), per_worker(second, name)
        for layer in LAYERS:
            for partition in PARTITIONS:
                key = (layer, partition)
                assert after[key] > before[key], (name, key, before.get(key), after.get(key))
    for layer in LAYERS:  # a malformed message of each kind went to some partition, in both rounds
        counted = [  # (partition, reason): count
            {(dict(k)["partition"], dict(k)["reason"]): v for k, v in scrape.items() if dict(k)["layer"] == layer}
            for scrape in (first["lambdaflow_consumer_rejects_total"], second["lambdaflow_consumer_rejects_total"])
        ]
        assert sum(counted[1].values()) > sum(counted[0].values())
        rejects = {reason for _, reason in counted[1]}
        assert len(rejects) >= 2, rejects
    delays = per_worker(second, "lambdaflow_commit_delay_seconds")
    ages = per_worker(second, "lambdaflow_status_age_seconds")
    assert sorted(delays) == sorted(ages) == sorted((layer, p) for layer in LAYERS for p in PARTITIONS)
    assert all(0 <= age < 30 for age in ages.values())
    snapshots = second["lambdaflow_snapshot_age_seconds"]
    assert sorted(dict(k)["partition"] for k in snapshots) == list(PARTITIONS)
    watermarks = {dict(k)["partition"]: v for k, v in second["lambdaflow_archiver_watermark_timestamp_seconds"].items()}
    assert sorted(watermarks) == list(PARTITIONS) and all(v > time.time() - 3 * 86400 for v in watermarks.values())
