"""`lambdaflow stream --replay` (Kappa): the speed state rebuilt from the log, switched in atomically."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

from lambdaflow.core.config import Settings
from lambdaflow.serving.query import Question, answer
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.ground_truth import METRICS, hourly_metrics
from tests.kafka_helpers import read_all
from tests.worker_helpers import WorkerProcess, speed_status_pids, wait_for


def daily(kafka_cli, days) -> list[dict]:
    return answer(Settings.from_env(kafka_cli.env), Question(days[0], days[-1]))


def test_a_replay_rebuilds_a_damaged_state_while_queries_keep_their_answers(
    kafka_cli, kafka_bootstrap, topic, data_dir, tmp_path
) -> None:
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=1), today]
    sent = produce(
        kafka_bootstrap,
        topic,
        3,
        generator.Options(
            days=1,
            events_per_day=4_000,
            seed=91,
            until=datetime.now(UTC),
            duplicates=0.05,
            malformed=0.01,
        ),
    )
    counted = kafka_cli("stream", "--until-idle")
    assert counted.exit_code == 0, counted.stderr[-3000:]
    live = data_dir / "speed" / topic
    assert live.is_symlink()
    first_generation = live.resolve()
    before = daily(kafka_cli, days)
    truth = hourly_metrics(read_all(kafka_bootstrap, topic, sent.messages))
    assert [{m: row[m] for m in METRICS} for row in before] == [
        {m: sum(v[m] for k, v in truth.items() if k[0] == day) for m in METRICS} for day in days
    ]

    # A running worker holds the state: no replay under it.
    worker = WorkerProcess("stream", kafka_cli.env, tmp_path / "worker.log")
    try:
        wait_for(
            lambda: set(speed_status_pids(data_dir, topic).values()) == {worker.pid},
            60,
            "the worker to own every partition",
        )
        refused = kafka_cli("stream", "--replay", "--until-idle")
        assert refused.exit_code == 1
        assert "a stream worker holds" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        worker.terminate()

    # A damaged state file: the worker refuses to start and says how to recover.
    (live / "partition-1.duckdb").write_bytes(b"not a database" * 100)
    damaged = kafka_cli("stream", "--until-idle")
    assert damaged.exit_code == 1 and "Traceback" not in damaged.stderr
    assert "cannot be read" in damaged.stderr and "lambdaflow stream --replay" in damaged.stderr

    answers, stop = [], threading.Event()

    def ask() -> None:
        while not stop.is_set():
            answers.append(daily(kafka_cli, days))

    reader = threading.Thread(target=ask)
    reader.start()
    try:
        replayed = kafka_cli("stream", "--replay", "--until-idle")
    finally:
        stop.set()
        reader.join()
    assert replayed.exit_code == 0, replayed.stderr[-3000:]
    assert json.loads(replayed.stdout)["replayed"]["messages"] == sent.messages
    # Every answer during the replay and the switch: the old state's, which is the truth.
    assert len(answers) > 5 and all(a == before for a in answers)
    assert live.resolve() != first_generation and not first_generation.exists()
    assert daily(kafka_cli, days) == before
    resumed = kafka_cli("stream", "--until-idle")  # the normal worker carries on from the replayed state
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["new_events"] == 0
