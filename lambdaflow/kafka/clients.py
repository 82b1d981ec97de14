"""Kafka clients with the settings every lambdaflow process shares."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from lambdaflow.core.errors import BrokerUnavailable, LambdaflowError

log = logging.getLogger(__name__)

CLIENT_ID = "lambdaflow"
# kafka-python waits this long at most between attempts to reach a broker that went away
# (its default is 30 s); a worker is back at work within seconds of the broker's return.
RECONNECT_BACKOFF_MAX_MS = 5000


def producer(bootstrap: str, **overrides: object) -> KafkaProducer:
    """An idempotent lz4 producer that waits for all in-sync replicas."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "client_id": CLIENT_ID,
        "acks": "all",
        "compression_type": "lz4",
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "enable_idempotence": True,
    }
    options.update(overrides)
    return _connect(KafkaProducer, bootstrap, **options)


def consumer(bootstrap: str, group_id: str | None, **overrides: object) -> KafkaConsumer:
    """A consumer that commits nothing by itself: lambdaflow keeps its own offsets."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "client_id": CLIENT_ID,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # Ask the broker not to create a topic it lost (a restarted broker) with its default
        # partition count when a consumer asks for it first; lambdaflow creates its topic itself.
        "allow_auto_create_topics": False,
        "max_poll_records": 50_000,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    options.update(overrides)
    return _connect(KafkaConsumer, bootstrap, **options)


# The cluster id Tansu, the embedded broker, reports unless told otherwise.
TANSU_CLUSTER_ID = "tansu_cluster"


def poll(consumer: KafkaConsumer, complained: Callable[[], object], **options: Any) -> dict:
    """``consumer.poll(**options)`` that outlasts a broker going away. kafka-python 3.0 mostly retries
    on its own, but some connection errors (its coordinator lookup, refused while the broker is down)
    it raises out of poll; those are an empty poll here, after telling the broker watch
    (``complained``), and the client reconnects on the next one."""
    try:
        return consumer.poll(**options)
    except (KafkaConnectionError, KafkaTimeoutError) as error:
        complained()
        log.debug("poll: %s; polling again", error)
        time.sleep(0.2)  # it raised at once: do not spin
        return {}


def close_consumer(consumer: KafkaConsumer) -> None:
    """Close a group member. On Kafka it leaves the group, so its partitions move at once. On
    Tansu (0.6) it does not: a group whose leader leaves during a rebalance keeps the departed
    member as its leader, and no member is assigned a partition again until the broker restarts.
    There the group notices the departure after session_timeout_ms instead, as after a kill -9."""
    if consumer._client.cluster.cluster_id == TANSU_CLUSTER_ID:  # kafka-python 3.0 internals, pinned
        consumer._coordinator.maybe_leave_group = lambda *args, **kwargs: None
    consumer.close()


class NewConnections:
    """Has a consumer connected to its broker anew since it was last asked?

    A broker that comes back without its log (the memory-only embedded broker) reuses offsets. A
    consumer that reconnects fetches on at its old position, in another log, which may by then have
    grown past it. Every record of the new log arrives over a connection made after the broker came
    back, so a worker that checks the log once after each new connection never counts such records
    as the old log's. kafka-python has no public hook for this; the check reads its connection table
    (kafka-python 3.0 internals, pinned in requirements.txt).
    """

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self._seen: list[object] = []

    def since_last_asked(self) -> bool:
        current = list(self._consumer._manager._conns.values())
        new = any(all(conn is not seen for seen in self._seen) for conn in current)
        self._seen = current  # held, so that no new connection can reuse a seen one's id
        return new


def commit_for_lag_tools(consumer: KafkaConsumer, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets (per partition) to Kafka for lag tools only: lambdaflow resumes from its own
    files, so a failed commit (say, during a rebalance) is logged and ignored, and one waits at most a
    second: with the broker away, a commit without a timeout would wait for its return."""
    try:
        consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(offset, "", -1) for p, offset in offsets.items()},
            timeout_ms=1000,
        )
    except Exception as error:
        log.debug("%s: committing offsets %s to Kafka failed: %s", topic, offsets, error)


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> int:
    """Create the topic unless it exists; return its partition count once metadata shows it."""
    admin = _connect(KafkaAdminClient, bootstrap, bootstrap_servers=bootstrap, client_id=CLIENT_ID)
    try:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            log.info("created topic %s with %d partitions", topic, partitions)
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()
    probe = _connect(
        KafkaConsumer, bootstrap, bootstrap_servers=bootstrap, client_id=CLIENT_ID, enable_auto_commit=False
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = probe.partitions_for_topic(topic)
            if found:
                if len(found) != partitions:
                    log.warning("topic %s has %d partitions, not %d", topic, len(found), partitions)
                return len(found)
            if time.monotonic() > deadline:
                raise LambdaflowError(f"topic {topic} did not appear in the broker's metadata in {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        probe.close()


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """Does any server of the bootstrap list accept a TCP connection?"""
    return any(_answers(server, timeout) for server in bootstrap.split(","))


def _connect(client_class, bootstrap: str, **options):
    if not broker_answers(bootstrap):
        raise BrokerUnavailable(f"no Kafka broker answers at {bootstrap}")
    try:
        return client_class(**options)
    except (KafkaTimeoutError, KafkaConnectionError):
        raise BrokerUnavailable(f"no Kafka broker answers at {bootstrap}") from None
    except KafkaError as error:
        raise LambdaflowError(f"cannot connect to Kafka at {bootstrap}: {error}") from None


def _answers(server: str, timeout: float = 2.0) -> bool:
    """A TCP connect, so an address with nothing behind it fails in seconds, not after client timeouts."""
    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False
