"""Bad input at every door: one clear line, a non-zero exit, no traceback, and nothing written.

The doors: the days of `lambdaflow query`, `batch` and `reconcile` and of a `lambda_batch` run
triggered by hand (real `dag.test()` runs); the metrics definition, as the CLI and as dbt read
it; strings that reach SQL; a published raw file deleted or damaged under a built day; a damaged
speed state under `lambdaflow stream`. One small archived, counted and half-built topic serves
the module: the day before yesterday archived only, yesterday built.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from deltalake import DeltaTable

from lambdaflow.core.raw_store import RawStore
from lambdaflow.kafka.clients import ensure_topic
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import produce
from tests.cli_helpers import CliResult, TopicWorld

PROJECT = Path(__file__).resolve().parents[1]
METRICS = ["events", "new_users", "active_users", "orders", "revenue_cents", "page_views"]


class World(TopicWorld):
    """One archived and counted topic with yesterday built, and the CLI pointed at it."""

    def __init__(self, bootstrap: str, root: Path) -> None:
        super().__init__(bootstrap, root)
        self.built = self.today - timedelta(days=1)
        self.unbuilt = self.today - timedelta(days=2)

    def python(self, script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", script, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def written(self) -> dict[str, str]:
        """Everything the batch layer writes (warehouse, published files, manifest, build records,
        reconcile reports, the empty day's file), by path and SHA-256."""
        found = {}
        for folder in ("batch", "tables/batch", "warehouse"):
            for path in sorted((self.data_dir / folder).rglob("*")):
                if path.is_file():
                    found[str(path.relative_to(self.data_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
        return found

    def raw_file(self, day: date, partition: int = 1) -> Path:
        """The day's one raw file of ``partition`` (the archiver published each partition once)."""
        ranges = RawStore(self.data_dir, self.topic).snapshot().file_ranges([day]).get(day, [])
        (path,) = [Path(each.uri) for each in ranges if each.partition == partition]
        return path


@pytest.fixture(scope="module")
def world(kafka_bootstrap, tmp_path_factory) -> World:
    world = World(kafka_bootstrap, tmp_path_factory.mktemp("bad-input"))
    ensure_topic(kafka_bootstrap, world.topic, 3)
    midnight = datetime.combine(world.today, datetime.min.time(), UTC)
    produce(
        kafka_bootstrap,
        world.topic,
        3,
        generator.Options(days=2, events_per_day=1_500, seed=1313, until=midnight, duplicates=0.02, malformed=0.02),
    )
    for command in (["archive", "--until-idle"], ["stream", "--until-idle"], ["batch", "--date", str(world.built)]):
        done = world.lambdaflow(*command)
        assert done.exit_code == 0, done.stderr[-3000:]
    assert "tables/batch/published_hours/_delta_log/" in "".join(world.written())
    return world


def one_line(result: CliResult, exit_code: int = 1) -> str:
    """A refused command: the exit code, nothing on stdout, no traceback, and exactly one line on stderr."""
    assert result.exit_code == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


# 1. the days of a query

NOT_A_DATE = "is not a date: use YYYY-MM-DD, e.g. 2026-11-26"


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2026-13-01", "2026-13-01", "--from '2026-13-01' is not a date of the calendar"),
        ("yesterday", "{today}", f"--from 'yesterday' {NOT_A_DATE}"),
        ("../../etc/passwd", "{today}", f"--from '../../etc/passwd' {NOT_A_DATE}"),
        ("2026-11-01/../x", "{today}", f"--from '2026-11-01/../x' {NOT_A_DATE}"),
        ("{today}", "2026-11-01'; drop table x; --", f'--to "2026-11-01\'; drop table x; --" {NOT_A_DATE}'),
        ("２０２６-11-01", "{today}", f"--from '２０２６-11-01' {NOT_A_DATE}"),  # not ASCII digits
        ("{today}", "{yesterday}", "--to {yesterday} is before --from {today}"),
        (
            "9999-12-31",
            "9999-12-31",
            "--from 9999-12-31 is too far ahead: a query reaches at most 366 days past today, to {latest} (UTC)",
        ),
        (
            "{today}",
            "{beyond}",
            "--to {beyond} is too far ahead: a query reaches at most 366 days past today, to {latest} (UTC)",
        ),
        ("2000-01-01", "{today}", "a range of {since_2000} days is too long (at most 3660)"),
    ],
    ids=[
        "no-13th-month",
        "word",
        "path",
        "path-after-a-date",
        "sql",
        "not-ascii-digits",
        "reversed",
        "far-future",
        "beyond-366-days",
        "over-3660-days",
    ],
)
def test_a_bad_query_range_gets_one_line_and_exit_1(world, first: str, last: str, message: str) -> None:
    today = datetime.now(UTC).date()
    values = {
        "today": today,
        "yesterday": today - timedelta(days=1),
        "latest": today + timedelta(days=366),
        "beyond": today + timedelta(days=367),
        "since_2000": (today - date(2000, 1, 1)).days + 1,
    }
    result = world.lambdaflow("query", "--from", first.format(**values), "--to", last.format(**values))
    assert one_line(result) == f"lambdaflow: error: {message.format(**values)}"


def test_a_query_reaches_exactly_366_days_ahead_and_answers_zeros_there(world) -> None:
    latest = datetime.now(UTC).date() + timedelta(days=366)
    result = world.lambdaflow("query", "--from", str(latest), "--to", str(latest))
    assert result.exit_code == 0, result.stderr[-3000:]
    (row,) = map(json.loads, result.stdout.splitlines())
    assert {m: row[m] for m in METRICS} == dict.fromkeys(METRICS, 0)


# 2. the day of `batch --date`, `reconcile --date` and a lambda_batch run triggered by hand

BAD_DAYS = [
    ("2026-13-01", "--date '2026-13-01' is not a date of the calendar"),
    ("yesterday", f"--date 'yesterday' {NOT_A_DATE}"),
    ("", f"--date '' {NOT_A_DATE}"),
    ("../../etc/passwd", f"--date '../../etc/passwd' {NOT_A_DATE}"),
    ("2026-11-01/../x", f"--date '2026-11-01/../x' {NOT_A_DATE}"),
    ("2026-11-26' or 1=1 --", f'--date "2026-11-26\' or 1=1 --" {NOT_A_DATE}'),
    ("9999-12-31", "--date 9999-12-31 is in the future (today is {today} UTC)"),
]


@pytest.mark.parametrize(
    ("command", "value", "message"),
    [("batch", value, message) for value, message in BAD_DAYS]
    + [
        ("reconcile", value, message)
        for value, message in BAD_DAYS
        if value in ("2026-13-01", "../../etc/passwd", "2026-11-26' or 1=1 --", "9999-12-31")
    ],
)
def test_a_bad_date_gets_one_line_and_writes_nothing(world, command: str, value: str, message: str) -> None:
    before = world.written()
    result = world.lambdaflow(command, "--date", value)
    today = datetime.now(UTC).date()
    assert one_line(result) == f"lambdaflow: error: {message.format(today=today)}"
    assert world.written() == before


DAG_RUNS = """
import json, sys
from lambdaflow.batch import airflow_home
from lambdaflow.batch import runner
from lambdaflow.core.config import settings

airflow_home.prepare(settings())
results = []
for ds in json.loads(sys.argv[1]):
    with runner.stdout_to_stderr():  # Airflow logs to stdout
        try:
            run = runner.load_dag("lambda_batch").test(logical_date=None, run_conf={"ds": ds})
        except Exception as error:
            results.append({"ds": ds, "refused": f"{type(error).__name__}: {error}"})
            continue
    results.append({"ds": ds, "state": str(run.state),
                    "tasks": {ti.task_id: [str(ti.state), ti.try_number] for ti in run.get_task_instances()}})
print(json.dumps(results))
"""


def test_lambda_batch_triggered_with_bad_input_fails_at_once_and_writes_nothing(world) -> None:
    """Real runs of the DAG (dag.test), as the UI's trigger with `ds` would start them."""
    damaged = world.raw_file(world.built)
    original = damaged.read_bytes()
    before = world.written()
    damaged.write_bytes(original[: len(original) // 2])  # truncated: no Parquet footer
    try:
        done = world.python(DAG_RUNS, json.dumps(["2026-13-01", "../../etc/passwd", "9999-12-31", str(world.built)]))
    finally:
        damaged.write_bytes(original)
    assert done.returncode == 0, done.stderr[-5000:]
    runs = {run["ds"]: run for run in json.loads(done.stdout.splitlines()[-1])}
    # Not a date: the param's schema refuses the run before it starts.
    for ds in ("2026-13-01", "../../etc/passwd"):
        assert runs[ds]["refused"].splitlines()[0] == (
            f"ParamValidationError: Invalid input for param ds: '{ds}' is not a 'date'"
        )
    # A day in the future: the first task fails once, without the retries that could not help.
    assert runs["9999-12-31"]["state"] == "failed"
    assert runs["9999-12-31"]["tasks"] == {
        "wait_for_complete_day": ["failed", 1],
        "build_day": ["upstream_failed", 0],
        "reconcile_day": ["upstream_failed", 0],
    }
    today = datetime.now(UTC).date()
    assert f"AirflowFailException: ds 9999-12-31 is in the future (today is {today} UTC)" in done.stderr
    # A damaged raw file: the build fails once, before dbt runs, naming the file.
    assert runs[str(world.built)]["tasks"] == {
        "wait_for_complete_day": ["success", 1],
        "build_day": ["failed", 1],
        "reconcile_day": ["upstream_failed", 0],
    }
    assert f"AirflowFailException: raw file {damaged} is not a readable Parquet file" in done.stderr
    assert "dbt build for" not in done.stderr
    assert world.written() == before


# 3. the metrics definition

BAD_DEFINITIONS = [
    # (an entry added to the definition as its 7th metric, what is wrong with it)
    (
        {"name": "median_amount", "aggregation": "median", "field": "amount_cents", "description": "Median."},
        " (median_amount): aggregation 'median' is not one of count, sum, users",
    ),
    (
        {"name": "purchases", "aggregation": "count", "event_types": ["purchase"], "description": "Purchases."},
        " (purchases): event_types ['purchase'] must be a list of signup, login, page_view, order",
    ),
    (
        {"name": "spend", "aggregation": "sum", "event_types": ["order"], "description": "Spend."},
        " (spend) has no field: a sum needs one of amount_cents",
    ),
    ({"name": "logins", "event_types": ["login"], "description": "Logins."}, " (logins) has no aggregation"),
    (
        {"name": "orders", "aggregation": "count", "event_types": ["order"], "description": "Orders again."},
        ": orders is defined twice",
    ),
    (
        {"name": "x; drop table y", "aggregation": "count", "description": "Injected."},
        ": name 'x; drop table y' is not a plain SQL identifier (a lower-case letter, then lower-case letters, "
        "digits or _, 63 at most) or is a key column such as country",
    ),
    (
        {"name": "order", "aggregation": "count", "event_types": ["order"], "description": "Orders."},
        ": name 'order' is a reserved word of SQL; choose another",
    ),
]


def defined_metrics() -> list[dict]:
    return yaml.safe_load((PROJECT / "dbt_project" / "dbt_project.yml").read_text())["vars"]["metrics"]


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    """A copy of the project's code, DAGs and dbt project: `python -m lambdaflow` run in it reads
    the copy's definition, as test_parity.py builds a copy of the dbt project."""
    root = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", "target", "logs", "dbt_packages", "bench")
    for part in ("lambdaflow", "stream_worker", "dags", "dbt_project"):
        shutil.copytree(PROJECT / part, root / part, ignore=ignore)
    return root


def with_definition(project: Path, metrics: list[dict]) -> Path:
    definition = project / "dbt_project" / "dbt_project.yml"
    document = yaml.safe_load((PROJECT / "dbt_project" / "dbt_project.yml").read_text())
    document["vars"]["metrics"] = metrics
    definition.write_text(yaml.safe_dump(document, sort_keys=False))
    return definition.resolve()


@pytest.mark.parametrize(("entry", "problem"), BAD_DEFINITIONS, ids=[e["name"] for e, _ in BAD_DEFINITIONS])
def test_the_cli_refuses_a_bad_metrics_definition_in_one_line(world, project_copy, entry, problem) -> None:
    definition = with_definition(project_copy, [*defined_metrics(), entry])
    day = str(world.built)
    result = world.lambdaflow("query", "--from", day, "--to", day, cwd=project_copy)
    assert one_line(result) == f"lambdaflow: error: {definition}: metric 7{problem}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("vars:\n  metrics: [\n    - name: events\n", "cannot read the metrics from {definition}: while parsing"),
        ("- just\n- a list\n", "{definition}: vars.metrics must be a non-empty list"),
    ],
    ids=["not-yaml", "no-vars"],
)
def test_the_cli_refuses_a_definition_file_it_cannot_read_in_one_line(world, project_copy, text, problem) -> None:
    definition = with_definition(project_copy, defined_metrics())
    definition.write_text(text)
    try:
        result = world.lambdaflow("query", "--from", str(world.built), "--to", str(world.built), cwd=project_copy)
    finally:
        with_definition(project_copy, defined_metrics())
    assert one_line(result).startswith(f"lambdaflow: error: {problem.format(definition=definition)}")


def test_a_batch_with_a_bad_metrics_definition_writes_nothing(world, project_copy) -> None:
    entry, problem = BAD_DEFINITIONS[0]
    definition = with_definition(project_copy, [*defined_metrics(), entry])
    before = world.written()
    result = world.lambdaflow("batch", "--date", str(world.built), cwd=project_copy)
    assert one_line(result) == f"lambdaflow: error: {definition}: metric 7{problem}"
    assert world.written() == before
    # The copy itself runs: with the project's own definition it answers.
    with_definition(project_copy, defined_metrics())
    fine = world.lambdaflow("query", "--from", str(world.built), "--to", str(world.built), cwd=project_copy)
    assert fine.exit_code == 0, fine.stderr[-3000:]
    assert json.loads(fine.stdout)["events"] > 0


DBT_BUILDS = """
import json, sys
from dbt.cli.main import dbtRunner

project, work, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
results = []
for variables in cases:
    result = dbtRunner().invoke(["build", "--vars", json.dumps(variables), "--project-dir", project,
                                 "--profiles-dir", project, "--target-path", work + "/target",
                                 "--log-path", work + "/logs", "--quiet"])
    results.append({"success": result.success, "error": str(result.exception)})
print(json.dumps(results))
"""


def test_dbt_refuses_a_bad_day_or_instant_before_any_sql_runs(world, project_copy, tmp_path) -> None:
    """The metrics definition is lambdaflow's to check, before it runs dbt (the tests above); the day and
    the instant a run is given reach SQL too, and dbt refuses them itself, however it is started."""
    with_definition(project_copy, defined_metrics())
    data_dir = tmp_path / "data"
    cases = [{"ds": "2026-11-26' or 1=1 --"}, {"ds": "2026-11-26", "until": "now(); drop table x"}]
    done = subprocess.run(
        [sys.executable, "-c", DBT_BUILDS, str(project_copy / "dbt_project"), str(tmp_path), json.dumps(cases)],
        env={**world.env, "LAMBDAFLOW_DATA_DIR": str(data_dir), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads(done.stdout.splitlines()[-1])
    expected = [
        "vars.ds '2026-11-26' or 1=1 --' is not a date: use YYYY-MM-DD",
        "vars.until 'now(); drop table x' is not an ISO-8601 date and time",
    ]
    for result, line in zip(results, expected, strict=True):
        assert not result["success"]
        assert result["error"].startswith("Compilation Error in model ")
        assert f"\n  {line}\n" in result["error"]
    assert not data_dir.exists()  # refused while parsing: dbt never opened the warehouse


# 4. strings that reach SQL


@pytest.mark.parametrize("country", ["DE' OR 1=1 --", "de", "DEU", "ＤＥ", ""])
def test_a_country_that_is_not_two_capital_letters_is_refused(world, country: str) -> None:
    day = str(world.built)
    result = world.lambdaflow("query", "--from", day, "--to", day, "--country", country)
    assert one_line(result) == (
        f"lambdaflow: error: --country {country!r} is not two capital letters, e.g. DE (ZZ: unknown)"
    )


def test_a_country_without_events_answers_zeros(world) -> None:
    day = str(world.built)
    result = world.lambdaflow("query", "--from", day, "--to", day, "--country", "QQ", "--hourly")
    assert result.exit_code == 0, result.stderr[-3000:]
    assert result.stdout == ""  # hours without events are left out
    daily = world.lambdaflow("query", "--from", day, "--to", day, "--country", "QQ")
    assert {m: json.loads(daily.stdout)[m] for m in METRICS} == dict.fromkeys(METRICS, 0)


def test_sql_in_the_data_directory_name_is_data_not_sql(world, tmp_path) -> None:
    """The data directory reaches every query as file names: they are bound, or quoted, never run."""
    quoted = tmp_path / "it's'; drop table x; --"
    ignore = shutil.ignore_patterns("airflow", "warehouse", "tmp", "*.lock")
    shutil.copytree(world.data_dir, quoted, symlinks=True, ignore=ignore)
    env = {**world.env, "LAMBDAFLOW_DATA_DIR": str(quoted)}
    query = ["query", "--from", str(world.unbuilt), "--to", str(world.today), "--hourly"]  # batch and speed files
    for command in (["status"], query):
        here, there = world.lambdaflow(*command), world.lambdaflow(*command, env=env)
        assert here.exit_code == 0 and there.exit_code == 0, there.stderr[-3000:]
        assert there.stdout == here.stdout
    served = {(row["event_date"], row["source"]) for row in map(json.loads, there.stdout.splitlines())}
    assert served == {(str(world.unbuilt), "realtime"), (str(world.built), "batch")}  # a day not built: speed
    status = json.loads(world.lambdaflow("status", env=env).stdout)
    assert status["dead_letter"]["messages"] > 0


# 5. a published raw file deleted or damaged


def damage_truncate(path: Path, original: bytes) -> None:
    path.write_bytes(original[: len(original) // 2])


def damage_garbage(path: Path, original: bytes) -> None:
    path.write_bytes(b"\x00garbage" * (len(original) // 8))


def damage_middle(path: Path, original: bytes) -> None:
    """Bytes changed inside a column chunk: the footer still reads, DuckDB would read other values."""
    changed = bytearray(original)
    start = len(changed) // 3
    changed[start : start + 200] = b"A" * 200
    path.write_bytes(bytes(changed))


def damage_delete(path: Path, original: bytes) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (damage_delete, "is missing"),  # the table still lists it: its bytes are gone
        (
            damage_truncate,
            "is not a readable Parquet file (parquet: File out of specification: The file must end with PAR1 or PARE)",
        ),
        (
            damage_garbage,
            "is not a readable Parquet file (parquet: File out of specification: The file must end with PAR1 or PARE)",
        ),
        (damage_middle, "has changed since the build of {day} at {built_at} read it (sha256 "),
    ],
    ids=["deleted", "truncated", "garbage", "changed"],
)
def test_a_damaged_raw_file_of_a_built_day_fails_the_build_and_the_reconciliation(world, damage, problem) -> None:
    path = world.raw_file(world.built)
    original = path.read_bytes()
    built_at = json.loads((world.data_dir / "batch" / "builds" / f"{world.built}.json").read_text())["built_at"]
    before = world.written()
    damage(path, original)
    try:
        build = world.lambdaflow("batch", "--date", str(world.built))
        reconciled = world.lambdaflow("reconcile", "--date", str(world.built))
    finally:
        path.write_bytes(original)
    expected = f"lambdaflow: error: raw file {path} {problem.format(day=world.built, built_at=built_at)}"
    for result in (build, reconciled):
        line = one_line(result)
        assert line.startswith(expected), line
        assert line.endswith(": restore it from a backup (an archived raw event is never changed or removed)")
    assert world.written() == before  # the published day, manifest, warehouse and reports as they were


def test_rows_a_build_read_gone_from_the_table_fail_the_build_and_the_reconciliation(world) -> None:
    """Compaction may remove the files a build read, never their rows: a delete through the table's
    own log is damage all the same."""
    events = RawStore(world.data_dir, world.topic).tables.events_uri
    record = json.loads((world.data_dir / "batch" / "builds" / f"{world.built}.json").read_text())
    deleted = world.raw_file(world.built, partition=0)
    gone = len(pl.read_parquet(deleted))
    version = DeltaTable(events).version()
    before = world.written()
    DeltaTable(events).delete(f"event_date = '{world.built}' and kafka_partition = 0")
    try:
        build = world.lambdaflow("batch", "--date", str(world.built))
        reconciled = world.lambdaflow("reconcile", "--date", str(world.built))
    finally:
        DeltaTable(events).restore(version)
    expected = (
        f"lambdaflow: error: raw rows of {events}/event_date={world.built} have changed since the build of "
        f"{world.built} at {record['built_at']} read them ({record['rows']} rows then, {record['rows'] - gone} now; "
        f"1 of its files have left the table, e.g. {deleted.name}): restore it from a backup"
    )
    for result in (build, reconciled):
        assert one_line(result).startswith(expected)
    assert world.written() == before


def test_an_unreadable_raw_file_of_a_day_never_built_writes_nothing(world) -> None:
    path = world.raw_file(world.unbuilt, partition=2)
    original = path.read_bytes()
    before = world.written()
    damage_garbage(path, original)
    try:
        result = world.lambdaflow("batch", "--date", str(world.unbuilt))
    finally:
        path.write_bytes(original)
    assert one_line(result).startswith(f"lambdaflow: error: raw file {path} is not a readable Parquet file (")
    assert world.written() == before


# 6. a damaged speed state under `lambdaflow stream`


def test_the_stream_worker_refuses_a_damaged_state_naming_the_replay(kafka_cli, data_dir, topic) -> None:
    state = data_dir / "speed" / topic / "partition-0.duckdb"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"\x00not a database" * 256)
    result = kafka_cli("stream", "--until-idle")
    assert result.exit_code == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lambdaflow: error:")]
    assert errors == [result.stderr.splitlines()[-1]]
    assert errors[0].startswith(f"lambdaflow: error: the speed state {state} cannot be read (")
    assert errors[0].endswith("rebuild it from the log with `lambdaflow stream --replay`")
    assert state.read_bytes() == b"\x00not a database" * 256  # left for the replay to replace


# 7. a damaged manifest or report: each reader names the file and the way back, the workers write nothing


def refused_after_logs(result: CliResult) -> str:
    """A worker that stopped on bad input: exit 1, nothing on stdout, no traceback, one error line, last."""
    assert result.exit_code == 1, result.stderr[-3000:]
    assert result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lambdaflow: error:")]
    assert errors == result.stderr.splitlines()[-1:], result.stderr[-3000:]
    return errors[0]


def digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param(
            '{"boundary": "2026-11-2', "Unterminated string starting at: line 1 column 14 (char 13)", id="cut-short"
        ),
        pytest.param("[]", "a JSON list, not an object", id="not-an-object", marks=pytest.mark.slow),
        pytest.param(
            '{"boundary": "soon", "days": {}}', "\"boundary\" 'soon' is not an ISO date and time", id="boundary"
        ),
        pytest.param(
            '{"days": {"../x": {"file": "f", "built_until": "u"}}}',
            "the day '../x' is not YYYY-MM-DD",
            id="day",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            '{"days": {"2026-11-01": {"file": 1}}}',
            'the entry for 2026-11-01 lacks "built_until"',
            id="entry",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            '{"days": {"2026-11-01": {"files": ["f", 1], "built_until": "u"}}}',
            'the entry for 2026-11-01 names no published files ("files")',
            id="files",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_damaged_batch_manifest_gets_one_line_naming_the_rebuild(world, text: str, reason: str) -> None:
    path = world.data_dir / "batch" / "manifest.json"
    original = path.read_bytes()
    day = str(world.built)
    path.write_text(text)
    try:
        before = world.written()
        results = {
            command[0]: world.lambdaflow(*command)
            for command in (
                ["query", "--from", day, "--to", day],
                ["status"],
                ["reconcile", "--date", day],
                ["batch", "--date", day],
                ["batch", "--late"],
            )
        }
        after = world.written()
    finally:
        path.write_bytes(original)
    expected = (
        f"lambdaflow: error: {path} cannot be read ({reason}): move it aside, then rebuild the built days "
        "with `lambdaflow batch --date D` or a backfill of lambda_batch"
    )
    assert {command: one_line(result) for command, result in results.items()} == dict.fromkeys(results, expected)
    assert after == before


def test_a_damaged_raw_table_log_stops_the_archiver_and_its_readers(world) -> None:
    """The table's log says which raw files count and where each partition resumes: the archiver does
    not guess, and the batch, `status` and `--verify` refuse too, each with one line."""
    store = RawStore(world.data_dir, world.topic)
    log_dir = Path(store.tables.events_uri) / "_delta_log"
    last = sorted(log_dir.glob("*.json"))[-1]
    original = last.read_bytes()
    stored = digests(world.data_dir / "tables")
    last.write_text('{"add": {"path": ')
    try:
        archived = world.lambdaflow("archive", timeout=180)  # no --until-idle: it must stop by itself
        others = [
            world.lambdaflow(*command)
            for command in (["archive", "--verify"], ["status"], ["batch", "--date", str(world.unbuilt)])
        ]
    finally:
        last.write_bytes(original)
    expected = (
        f"lambdaflow: error: the raw table {store.tables.events_uri} cannot be read (Kernel error: Json error: "
        "Truncated record whilst reading value): restore its _delta_log from a backup; it says which files "
        "count and where each partition resumes, and lambdaflow will not guess"
    )
    assert refused_after_logs(archived) == expected
    for result in others:
        assert one_line(result) == expected
    assert digests(world.data_dir / "tables") == stored


def test_the_stream_worker_counts_on_through_a_damaged_batch_manifest(
    kafka_cli, kafka_bootstrap, data_dir, topic
) -> None:
    """Realtime counts do not wait for the batch layer's repair: the worker says so once and keeps
    the last boundary it read; moved aside, the manifest is no longer in the way of queries."""
    midnight = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)
    yesterday = str((midnight - timedelta(days=1)).date())
    sent = produce(kafka_bootstrap, topic, 3, generator.Options(days=1, events_per_day=300, seed=17, until=midnight))
    manifest = data_dir / "batch" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{")
    counted = kafka_cli("stream", "--until-idle")
    assert counted.exit_code == 0, counted.stderr[-3000:]
    warnings = [line for line in counted.stderr.splitlines() if f"{manifest} cannot be read" in line]
    assert len(warnings) == 1, counted.stderr[-3000:]
    assert warnings[0].endswith("counting goes on at the last boundary read (None) and no day is dropped")
    assert one_line(kafka_cli("query", "--from", yesterday, "--to", yesterday)).startswith(
        f"lambdaflow: error: {manifest} cannot be read ("
    )
    manifest.rename(manifest.with_suffix(".damaged"))
    answered = kafka_cli("query", "--from", yesterday, "--to", yesterday)
    assert answered.exit_code == 0, answered.stderr[-3000:]
    assert json.loads(answered.stdout)["events"] == sent.events_per_date[yesterday] == sent.events
