"""Events sent to a topic in bulk, for the sections that need a topic with history in it.

The events come from :func:`bench.events.kafka_messages`, drawn in chunks so
that millions of them never sit in memory at once: chunk ``k`` uses seed
``seed + k`` (event ids are unique across chunks, the user population is the
same) and covers its share of the time span, so the whole topic is in
occurred_at order per partition, as a steady stream would leave it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from kafka.admin import KafkaAdminClient, NewTopic

from bench.events import kafka_messages
from lambdaflow.kafka import clients

CHUNK = 500_000


@dataclass(frozen=True)
class Sent:
    messages: int
    """Messages sent, duplicates included."""
    events: int
    """Distinct events."""
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / max(self.seconds, 1e-9)


def create_topic(bootstrap: str, topic: str, partitions: int = 3, configs: dict[str, str] | None = None) -> None:
    """Create the topic with ``configs`` (kafka-python's admin client), then wait until metadata shows it."""
    if configs:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lambdaflow-bench")
        try:
            admin.create_topics(
                [NewTopic(topic, num_partitions=partitions, replication_factor=1, topic_configs=configs)]
            )
        finally:
            admin.close()
    clients.ensure_topic(bootstrap, topic, partitions)


def send_events(
    bootstrap: str,
    topics: list[str],
    count: int,
    seed: int,
    start: datetime,
    end: datetime,
    duplicate_every: int = 0,
) -> Sent:
    """``count`` events spread evenly from ``start`` to ``end``, each sent to every topic of ``topics``;
    with ``duplicate_every`` = n, every n-th event is sent a second time right after the first copy
    (the same key, value and partition, as a producer's retry would)."""
    producer = clients.producer(bootstrap)
    send = producer.send
    span = (end - start) / max(count, 1)
    started = time.monotonic()
    messages = 0
    try:
        for index, first in enumerate(range(0, count, CHUNK)):
            size = min(CHUNK, count - first)
            batch = kafka_messages(size, seed + index, start + span * (first + size), span * size, partitions=3)
            for number, (key, value, partition) in enumerate(
                zip(batch.keys, batch.values, batch.partitions, strict=True)
            ):
                copies = 2 if duplicate_every and (first + number) % duplicate_every == duplicate_every - 1 else 1
                for topic in topics:
                    for _ in range(copies):
                        send(topic, key=key, value=value, partition=partition)
                messages += copies
        producer.flush()
    finally:
        producer.close()
    return Sent(messages, count, round(time.monotonic() - started, 3))
