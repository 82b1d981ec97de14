"""A worker that stops cleanly while its group rebalances leaves the group able to assign.

Tansu, the embedded broker, keeps a leader that leaves during a rebalance as the group's
leader, and then assigns no partition to anyone until it restarts: the workers close without
leaving the group there (`clients.close_consumer`), and the group expires them as after a kill -9.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from kafka import ConsumerRebalanceListener

from lambdaflow.batch.archiver import Archiver
from lambdaflow.core.raw_store import RawStore
from lambdaflow.kafka import clients
from lambdaflow.kafka.group import NoPartitionAssigned
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.worker_helpers import WorkerProcess, status_pids, wait_for


def revocations(worker: WorkerProcess) -> int:
    return worker.log_path.read_text().count(" revoked")


@pytest.mark.slow
def test_archivers_stopped_during_a_rebalance_leave_a_group_that_still_assigns(
    kafka_cli, kafka_bootstrap, topic, data_dir, tmp_path
) -> None:
    sent = produce(
        kafka_bootstrap, topic, 3, generator.Options(days=0, events_per_day=3_000, seed=23, until=datetime.now(UTC))
    )
    leader = WorkerProcess("archive", kafka_cli.env, tmp_path / "leader.log")
    follower = joiner = None
    try:
        wait_for(
            lambda: (
                set(status_pids(data_dir, topic).values()) == {leader.pid} and len(status_pids(data_dir, topic)) == 3
            ),
            120,
            "the first archiver to take every partition",
        )
        follower = WorkerProcess("archive", kafka_cli.env, tmp_path / "follower.log")
        wait_for(
            lambda: set(status_pids(data_dir, topic).values()) == {leader.pid, follower.pid},
            120,
            "two archivers to share the partitions",
        )
        time.sleep(3)  # the group settles
        settled = revocations(leader), revocations(follower)
        joiner = WorkerProcess("archive", kafka_cli.env, tmp_path / "joiner.log")
        wait_for(
            lambda: (revocations(leader), revocations(follower)) != settled,
            120,
            "the group to start a rebalance for the third archiver",
        )
        leader.terminate()  # mid-rebalance, the leader and the follower stop cleanly
        follower.terminate()
        time.sleep(8)
        joiner.kill_9()
        caught_up = kafka_cli("archive", "--until-idle", timeout=400)
    finally:
        for worker in (leader, follower, joiner):
            if worker is not None:
                worker.ensure_stopped()
    assert caught_up.exit_code == 0, caught_up.stderr[-3000:]
    assert sum(int(offset) for offset in json.loads(caught_up.stdout)["resume_offsets"].values()) == sent.messages


class Member(threading.Thread, ConsumerRebalanceListener):
    """A plain kafka-python group member that leaves its group when it closes, as on Kafka."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.revoked = threading.Event()
        self.consumer = clients.consumer(bootstrap, group, session_timeout_ms=6000, heartbeat_interval_ms=1500)
        self.consumer.subscribe([topic], listener=self)
        self.start()

    def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            self.revoked.set()

    def on_partitions_assigned(self, assigned) -> None:
        pass

    def run(self) -> None:
        while not self.stop.is_set():
            self.consumer.poll(timeout_ms=200)
        self.consumer.close()  # with LeaveGroup


@pytest.mark.slow
def test_a_worker_held_out_of_its_group_stops_until_idle_with_an_error(kafka_bootstrap, topic, data_dir) -> None:
    """The group wedged on purpose, with members that leave during a rebalance: `--until-idle`
    cannot be caught up on nothing, so it says so instead of reporting success."""
    group = f"wedged-{topic}"
    leader = Member(kafka_bootstrap, topic, group)
    wait_for(lambda: len(leader.consumer.assignment()) == 3, 60, "the first member to take every partition")
    follower = Member(kafka_bootstrap, topic, group)
    wait_for(leader.revoked.is_set, 60, "the second member's rebalance")
    wait_for(lambda: follower.consumer.assignment(), 60, "the second member's partitions")
    leader.revoked.clear()
    joiner = Member(kafka_bootstrap, topic, group)
    wait_for(leader.revoked.is_set, 60, "the third member's rebalance")
    for member in (leader, follower, joiner):
        member.stop.set()
        member.join(timeout=30)
    archiver = Archiver(kafka_bootstrap, RawStore(data_dir, topic), group_id=group)
    with pytest.raises(NoPartitionAssigned) as refused:
        archiver.run(threading.Event(), until_idle=True, idle_timeout=20)
    assert str(refused.value).startswith(
        f"no partition of {topic} was assigned to this member of the group '{group}' in 20 s: "
    )
    assert not (data_dir / "tables").exists()
