"""`lambdaflow serve` answers over HTTP exactly what the CLI prints, refuses what the CLI refuses
with the same line, says why a component is unhealthy, and exposes Prometheus metrics.

One real `lambdaflow serve` process (started here, stopped by its PID) over a small world of
published files (tests/serving_world.py); each answer is compared with the real CLI's.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lambdaflow.core.days import today
from lambdaflow.core.files import replace_json
from lambdaflow.core.raw_store import RawStore
from lambdaflow.serving.health import STALE_SECONDS
from tests.cli_helpers import Cli
from tests.serve_helpers import start_serve
from tests.serving_world import make_world

TOPIC = "events"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    scratch = tmp_path_factory.mktemp("serve")
    data_dir = scratch / "data"
    settings = make_world(data_dir, seed=5, today=today())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_"))}
    env |= {"LAMBDAFLOW_DATA_DIR": str(data_dir), "LAMBDAFLOW_TOPIC": TOPIC}
    served = start_serve(env, scratch)
    yield settings, Cli(env), served
    served.stop()


def _cli_rows(cli: Cli, *args: str) -> list[dict]:
    done = cli("query", *args)
    assert done.exit_code == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _status(settings, layer: str, partition: int, updated: datetime) -> None:
    document = {
        "topic": TOPIC,
        "partition": partition,
        "next_offset": 90,
        "end_offset": 100,
        "updated_at": updated.isoformat(timespec="milliseconds"),
        "pid": 1,
    }
    if layer == "archiver":
        path = RawStore(settings.data_dir, TOPIC).status_path(partition)
    else:
        path = settings.layout.speed_state(TOPIC) / f"status-{partition}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_json(path, document)


def test_query_answers_the_rows_the_cli_prints(world) -> None:
    settings, cli, served = world
    day, yesterday = today(), today() - timedelta(days=1)
    cases: list[dict[str, str]] = [
        {},  # the last 7 days by default, on both doors
        {"from": (day - timedelta(days=9)).isoformat(), "to": day.isoformat()},
        {"from": yesterday.isoformat(), "to": day.isoformat(), "hourly": "true"},
        {"from": yesterday.isoformat(), "to": day.isoformat(), "hourly": "true", "country": "DE"},
        {"to": yesterday.isoformat(), "country": "FR"},
    ]
    for params in cases:
        args = [f"--{k}" if k == "hourly" else f"--{k}={v}" for k, v in params.items()]
        query = "&".join(f"{k}={v}" for k, v in params.items())
        reply = served.get(f"/api/query?{query}")
        assert reply.status == 200, reply.body
        assert reply.content_type.startswith("application/json")
        rows = reply.json()
        assert rows == _cli_rows(cli, *args), params
        assert rows, params  # the world has events on every asked day
    default = served.get("/api/query").json()
    assert [row["event_date"] for row in default] == [(day - timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    assert {row["source"] for row in default} >= {"batch", "mixed"}


@pytest.mark.parametrize(
    "query, cli_args",
    [
        ("from=yesterday&to=2026-11-30", ["--from", "yesterday", "--to", "2026-11-30"]),
        ("from=2026-11-30&to=2026-02-30", ["--from", "2026-11-30", "--to", "2026-02-30"]),
        ("from=2026-11-30&to=2026-11-01", ["--from", "2026-11-30", "--to", "2026-11-01"]),
        ("from=2026-11-30&to=2026-11-30&country=de", ["--from", "2026-11-30", "--to", "2026-11-30", "--country", "de"]),
        ("from=2026-11-30&to=9999-12-31", ["--from", "2026-11-30", "--to", "9999-12-31"]),
    ],
)
def test_bad_parameters_get_400_and_the_cli_line(world, query: str, cli_args: list[str]) -> None:
    _, cli, served = world
    reply = served.get(f"/api/query?{query}")
    done = cli("query", *cli_args)
    assert done.exit_code == 1 and reply.status == 400
    assert reply.json() == {"error": done.stderr.strip().splitlines()[-1]}


def test_parameters_the_cli_has_no_word_for_are_refused_too(world) -> None:
    _, _, served = world
    for query, message in [
        ("hourly=maybe", "hourly 'maybe' is not true or false"),
        ("form=2026-11-30", "unknown parameter 'form': /api/query takes from, to, hourly, country"),
    ]:
        reply = served.get(f"/api/query?{query}")
        assert (reply.status, reply.json()) == (400, {"error": f"lambdaflow: error: {message}"})
    assert served.get("/api/status?verbose=1").status == 400


def test_status_is_the_object_the_cli_prints(world) -> None:
    _, cli, served = world
    done = cli("status")
    assert done.exit_code == 0, done.stderr
    assert served.get("/api/status").json() == json.loads(done.stdout)


def test_health_says_which_worker_is_missing_and_recovers(world) -> None:
    settings, _, served = world
    reply = served.get("/healthz")
    assert reply.status == 503
    components = reply.json()["components"]
    assert components["serving"] == {"healthy": True, "why": []}
    assert components["archiver"]["why"][0] == "partition 0: no archiver worker has written its status yet"
    now = datetime.now(UTC)
    for partition in range(3):
        _status(settings, "archiver", partition, now)
        _status(settings, "stream", partition, now - timedelta(seconds=STALE_SECONDS + 60) if partition == 2 else now)
    assert served.get("/healthz/archiver").status == 200
    stream = served.get("/healthz/stream")
    assert stream.status == 503
    (why,) = stream.json()["stream"]["why"]
    assert why.startswith("partition 2: status last written 9") and why.endswith("no stream worker is running for it")
    _status(settings, "stream", 2, now)
    assert served.get("/healthz").status == 200
    assert served.get("/healthz/nothing").status == 400


def test_metrics_are_prometheus_text_with_the_serving_figures(world) -> None:
    settings, _, served = world
    served.get("/api/query")
    reply = served.get("/metrics")
    assert reply.status == 200 and reply.content_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(reply.body.decode())}
    requests = {
        (s.labels["route"], s.labels["code"]): s.value
        for s in families["lambdaflow_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("/api/query", "200")] >= 1
    manifest = json.loads((settings.data_dir / "batch" / "manifest.json").read_text())
    (boundary,) = families["lambdaflow_serving_boundary_timestamp_seconds"].samples
    assert boundary.value == datetime.fromisoformat(manifest["boundary"]).timestamp()
    (built,) = families["lambdaflow_batch_days_built"].samples
    assert built.value == len(manifest["days"])
    ages = {s.labels["partition"]: s.value for s in families["lambdaflow_snapshot_age_seconds"].samples}
    assert sorted(ages) == ["0", "1", "2"] and all(0 <= age < 600 for age in ages.values())


def test_the_dashboard_and_its_scripts_are_served(world) -> None:
    _, _, served = world
    page = served.get("/")
    assert page.status == 200 and b'<script src="/static/dashboard.js">' in page.body
    plotly = served.get("/static/plotly.min.js")
    assert plotly.status == 200 and b"plotly.js v" in plotly.body[:200]
    assert served.get("/static/../pyproject.toml").status == 404
    definitions = served.get("/api/definitions").json()
    assert [d["name"] for d in definitions][:2] == ["events", "new_users"]


def test_a_port_in_use_is_one_clear_line(world, tmp_path: Path) -> None:
    _, cli, served = world
    port = served.url.rsplit(":", 1)[1]
    done = cli("serve", "--port", port, timeout=60)
    assert done.exit_code == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"lambdaflow: error: cannot listen on 127.0.0.1:{port}: Address already in use; pick another with --port"
    )
