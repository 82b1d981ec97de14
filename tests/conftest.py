"""Shared fixtures: a real Kafka-compatible broker over TCP, and the real CLI.

The session's broker is the embedded Tansu on a free 127.0.0.1 port, started
here and stopped here by its PID; with KAFKA_BOOTSTRAP set, the tests use that
broker instead. Every test that touches Kafka gets a topic of its own; a test
that stops or restarts its broker gets a broker of its own (`own_broker`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambdaflow.core.storage import Storage
from lambdaflow.kafka.broker import EmbeddedBroker
from lambdaflow.kafka.clients import ensure_topic
from lambdaflow.ops.object_store import LocalS3Server
from tests.cli_helpers import Cli
from tests.worker_helpers import RestartableBroker

# The modules that take longest (the chaos and bench runs and the stack in the slow tier, a shared
# world to build, kill loops, replays) are handed out first under `pytest -n`, so that no worker
# starts one of them while the others sit idle.
LONGEST_FIRST = (
    "test_chaos.py",
    "test_bench.py",
    "test_stack.py",
    "test_bad_input.py",
    "test_batch.py",
    "test_replay.py",
    "test_archiver.py",
    "test_stream.py",
    "test_parity.py",
    "test_contract_kafka.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def weight(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=weight)  # stable: within a module, the written order


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> str:
    real_kafka = os.environ.get("KAFKA_BOOTSTRAP")
    if real_kafka:
        yield real_kafka
        return
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    """A local S3-compatible server (moto's: it enforces conditional writes as S3 and MinIO do),
    started for the tests that ask for it and stopped by its PID."""
    server = LocalS3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The default storage under ``tmp_path``, then a bucket of its own on the session's S3 server."""
    if request.param == "local":
        return Storage.from_env({}, tmp_path)
    server: LocalS3Server = request.getfixturevalue("s3_server")
    bucket = server.bucket(f"lake-{uuid.uuid4().hex[:12]}")
    return Storage.from_env({"LAMBDAFLOW_STORAGE_URL": f"{bucket}/lambdaflow", **server.env()}, tmp_path)


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    """A fresh topic with 3 partitions."""
    name = f"events-{uuid.uuid4().hex[:12]}"
    ensure_topic(kafka_bootstrap, name, partitions=3)
    return name


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(data_dir: Path) -> Cli:
    """The CLI with an empty data directory and no broker configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_"))}
    env["LAMBDAFLOW_DATA_DIR"] = str(data_dir)
    return Cli(env)


@pytest.fixture
def kafka_cli(cli: Cli, kafka_bootstrap: str, topic: str) -> Cli:
    """The CLI pointed at the session's broker and a fresh topic."""
    return Cli({**cli.env, "KAFKA_BOOTSTRAP": kafka_bootstrap, "LAMBDAFLOW_TOPIC": topic})


@pytest.fixture
def own_broker(kafka_cli: Cli, tmp_path: Path) -> RestartableBroker:
    """Points the CLI at a broker of the test's own, which the test may stop and restart."""
    broker = RestartableBroker(tmp_path, kafka_cli.env["LAMBDAFLOW_TOPIC"])
    kafka_cli.env["KAFKA_BOOTSTRAP"] = broker.bootstrap
    yield broker
    broker.stop()
