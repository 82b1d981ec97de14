"""The fast serving path answers exactly what the serving model, rendered as dbt is given it, serves.

`lambdaflow.serving.query.answer` keeps the rendered SQL (file lists bound as
parameters), keeps one DuckDB per process, reads only the files that can hold
the asked days and sums the range in the same statement. Here a small world of
published files (no Kafka, no dbt) is answered both ways: by `answer`, and by
the reference: the model rendered with every published file as a literal list,
run in a fresh DuckDB, summed in Python.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import threading
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import jinja2
import polars as pl
import pytest

from lambdaflow.core.config import Settings
from lambdaflow.core.files import read_json
from lambdaflow.serving import query
from lambdaflow.serving.query import SERVING_SQL, Question, ServingInputs, answer
from tests.serving_world import COUNTRIES, DAYS, NAMES, TODAY, cells, make_world, publish_day, write_snapshot


def _dbt_template() -> jinja2.Template:
    """The model's text compiled afresh, as dbt would: nothing of query.py's caches."""
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(SERVING_SQL.read_text())


def reference(settings: Settings, question: Question) -> list[dict]:
    """The model rendered as dbt is given it (every published file, literal lists), a fresh DuckDB, sums in Python."""
    inputs = ServingInputs.current(settings)
    with inputs.pinned() as pinned, duckdb.connect() as con:
        variables = pinned.variables()
        sql = _dbt_template().render(
            var=lambda name, default=None: variables.get(name, default), config=lambda **_: "", source=lambda *_: ""
        )
        result = con.sql(sql)
        served = [dict(zip(result.columns, row, strict=False)) for row in result.fetchall()]
    totals: dict[tuple, dict] = {}
    for row in served:
        if not question.date_from <= row["event_date"] <= question.date_to:
            continue
        if question.country and row["country"] != question.country:
            continue
        key = (row["event_date"], row["hour"]) if question.hourly else (row["event_date"],)
        cell = totals.setdefault(key, {m: [] for m in NAMES})
        for m in NAMES:
            cell[m].append(row[m])
    answers = []
    for offset in range((question.date_to - question.date_from).days + 1):
        day = question.date_from + timedelta(days=offset)
        for hour in range(24) if question.hourly else [None]:
            cell = totals.get((day, hour) if question.hourly else (day,))
            if question.hourly and cell is None:
                continue
            row = {"event_date": day.isoformat(), **({"hour": hour} if question.hourly else {})}
            for m in NAMES:
                values = cell[m] if cell else [0]
                row[m] = None if None in values else sum(values)
            row["source"] = query.source_of(day, hour, inputs.served_until.get(day))
            answers.append(row)
    return answers


def _questions(rng: random.Random, count: int) -> list[Question]:
    first, last = DAYS[0] - timedelta(days=3), TODAY + timedelta(days=2)
    span = (last - first).days
    found = []
    for _ in range(count):
        start = first + timedelta(days=rng.randint(0, span))
        end = start + timedelta(days=rng.randint(0, (last - start).days))
        found.append(
            Question(start, end, hourly=rng.random() < 0.4, country=rng.choice([None, None, *COUNTRIES, "US"]))
        )
    return found


@pytest.mark.parametrize("boundary_hour, snapshots", [(10, True), (0, True), (10, False), (None, True)])
def test_answers_equal_the_model_rendered_as_dbt_is_given_it(tmp_path, boundary_hour, snapshots) -> None:
    settings = make_world(tmp_path / "data", seed=3, boundary_hour=boundary_hour, snapshots=snapshots)
    rng = random.Random(11)
    fixed = [
        Question(TODAY - timedelta(days=6), TODAY),
        Question(DAYS[0], DAYS[1]),  # a week; days without page_views
        Question(TODAY, TODAY, hourly=True),
        Question(DAYS[-1], TODAY, hourly=True, country="DE"),
    ]
    for question in fixed + _questions(rng, 30):
        assert answer(settings, question) == reference(settings, question), question


def test_hourly_rows_are_the_models_rows_over_every_published_file(tmp_path) -> None:
    settings = make_world(tmp_path / "data", seed=2)
    inputs = ServingInputs.current(settings)
    with inputs.pinned() as pinned, duckdb.connect() as con:
        variables = pinned.variables()
        sql = _dbt_template().render(
            var=lambda name, default=None: variables.get(name, default), config=lambda **_: "", source=lambda *_: ""
        )
        expected = con.sql(sql).pl()
    order = ["event_date", "hour", "country", "source"]
    assert query.hourly_rows(inputs).sort(order).equals(expected.sort(order))


def test_the_null_of_a_metric_not_yet_built_survives_the_sums(tmp_path) -> None:
    settings = make_world(tmp_path / "data", seed=4)
    old, new = answer(settings, Question(DAYS[1], DAYS[2]))
    assert old["page_views"] is None and old["events"] > 0
    assert isinstance(new["page_views"], int)


def test_an_answer_opens_only_the_files_that_can_hold_its_days(tmp_path, monkeypatch) -> None:
    data_dir = tmp_path / "data"
    settings = make_world(data_dir, seed=5)
    manifest = read_json(data_dir / "batch" / "manifest.json")
    opened: list[str] = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)

    def files_for(question: Question) -> set[str]:
        opened.clear()
        answer(settings, question)
        return {str(Path(p).relative_to(data_dir)) for p in opened if p.startswith(str(data_dir))}

    def batch(*days: date) -> set[str]:
        return {manifest["days"][d.isoformat()]["file"] for d in days}

    snapshots = {f"speed/events/snapshots/partition-{p}.parquet" for p in range(3)}
    assert files_for(Question(DAYS[1], DAYS[2])) == batch(DAYS[1], DAYS[2])  # all before the boundary
    assert files_for(Question(DAYS[-1], TODAY)) == batch(DAYS[-1], TODAY) | snapshots
    assert files_for(Question(TODAY + timedelta(days=1), TODAY + timedelta(days=3))) == snapshots
    # Days before the first built day are not built: the speed layer serves them, from its snapshots.
    assert files_for(Question(DAYS[0] - timedelta(days=9), DAYS[0] - timedelta(days=1))) == snapshots


def _speed_sums(data_dir: Path, day: date, hours: range) -> dict[str, int]:
    """What the snapshots hold for ``hours`` of ``day``, summed over partitions and countries."""
    frame = pl.read_parquet(sorted((data_dir / "speed" / "events" / "snapshots").glob("*.parquet")))
    frame = frame.filter((pl.col("event_date") == day) & pl.col("hour").is_in(list(hours)))
    return {m: int(frame[m].sum()) for m in NAMES}


def test_a_day_the_batch_has_not_built_is_served_by_the_speed_layer_never_as_batch_zeros(tmp_path) -> None:
    """Today built before the days behind it (their catch-up runs still waiting): the boundary is in
    today, yet yesterday has no batch file. Yesterday must be the speed layer's, and its source says so."""
    data_dir = tmp_path / "data"
    settings = make_world(data_dir, seed=12, boundary_hour=None)  # snapshots only: yesterday and today
    rng = random.Random(13)
    boundary = datetime(TODAY.year, TODAY.month, TODAY.day, 10)
    publish_day(data_dir, TODAY, cells(rng, TODAY, range(10), NAMES), boundary, boundary, "today-first")

    (yesterday,) = answer(settings, Question(DAYS[-1], DAYS[-1]))
    assert yesterday == {
        "event_date": DAYS[-1].isoformat(),
        **_speed_sums(data_dir, DAYS[-1], range(24)),
        "source": "realtime",
    }
    assert yesterday["events"] > 0
    hourly = answer(settings, Question(DAYS[-1], TODAY, hourly=True))
    assert {row["source"] for row in hourly if row["event_date"] == DAYS[-1].isoformat()} == {"realtime"}
    assert [row["source"] for row in hourly if row["event_date"] == TODAY.isoformat()] == ["batch"] * 10 + [
        "realtime"
    ] * 14
    for question in (Question(DAYS[-1], TODAY), Question(DAYS[-1], TODAY, hourly=True, country="FR")):
        assert answer(settings, question) == reference(settings, question)


def test_the_hours_after_a_days_built_until_are_the_speed_layers_even_before_the_boundary(tmp_path) -> None:
    """Yesterday built only until 06:00 (a manual run), then today from a later boundary: yesterday's
    hours from 06:00 on were never built, so the speed layer serves them, not the batch's empty hours."""
    data_dir = tmp_path / "data"
    settings = make_world(data_dir, seed=14, boundary_hour=None)
    rng = random.Random(15)
    day = DAYS[-1]
    six = datetime(day.year, day.month, day.day, 6)
    publish_day(data_dir, day, cells(rng, day, range(6), NAMES), six, six, "partial")
    boundary = datetime(TODAY.year, TODAY.month, TODAY.day, 3)
    publish_day(data_dir, TODAY, cells(rng, TODAY, range(3), NAMES), boundary, boundary, "later")

    hourly = answer(settings, Question(day, day, hourly=True))
    assert [row["source"] for row in hourly] == ["batch"] * 6 + ["realtime"] * 18
    later = [row for row in hourly if row["hour"] >= 6]
    assert sum(row["events"] for row in later) == _speed_sums(data_dir, day, range(6, 24))["events"] > 0
    (whole,) = answer(settings, Question(day, day))
    assert whole["source"] == "mixed"
    assert whole == reference(settings, Question(day, day))[0]


def test_the_serving_sql_is_rendered_once_per_template_metrics_and_boundary(tmp_path) -> None:
    data_dir = tmp_path / "data"
    settings = make_world(data_dir, seed=6)
    query.compiled_template.cache_clear()
    query.rendered_statement.cache_clear()
    week = Question(TODAY - timedelta(days=6), TODAY)
    first = answer(settings, week)
    for _ in range(3):
        assert answer(settings, week) == first
    assert query.compiled_template.cache_info().misses == 1
    assert query.rendered_statement.cache_info().misses == 1
    # The boundary moves (today built further): rendered again, and the answer follows it.
    boundary = datetime(TODAY.year, TODAY.month, TODAY.day, 12)
    publish_day(data_dir, TODAY, cells(random.Random(1), TODAY, range(12), NAMES), boundary, boundary, "moved")
    assert answer(settings, week) == reference(settings, week)
    assert query.rendered_statement.cache_info().misses == 2


def test_answers_from_threads_while_files_are_replaced_each_see_one_version_of_each_file(tmp_path) -> None:
    """The process's one DuckDB, a cursor per answer, pinned paths (/dev/fd/N) that name other files in
    the next answer: no answer may mix versions, so every answer is one of the versions' combinations."""
    data_dir = tmp_path / "data"
    settings = make_world(data_dir, seed=7)
    rng = random.Random(8)
    day = DAYS[-1]
    end = datetime(day.year, day.month, day.day) + timedelta(days=1)
    boundary = datetime(TODAY.year, TODAY.month, TODAY.day, 10)
    versions_day = [cells(rng, day, range(24), NAMES) for _ in range(2)]
    versions_snapshot = [cells(rng, TODAY, range(24), NAMES) for _ in range(2)]
    week = Question(TODAY - timedelta(days=6), TODAY)
    expected = []
    for index, (day_rows, snapshot_rows) in enumerate(itertools.product(versions_day, versions_snapshot)):
        publish_day(data_dir, day, day_rows, end, boundary, f"expected-{index}")
        write_snapshot(data_dir, 0, snapshot_rows)
        expected.append(reference(settings, week))

    stop, seen, errors = threading.Event(), [], []

    def writer() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            publish_day(data_dir, day, versions_day[n % 2], end, boundary, f"v{n}")
            write_snapshot(data_dir, 0, versions_snapshot[(n // 3) % 2])

    def reader() -> None:
        try:
            for _ in range(40):
                seen.append(answer(settings, week))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    writing = threading.Thread(target=writer)
    readers = [threading.Thread(target=reader) for _ in range(4)]
    writing.start()
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    stop.set()
    writing.join()
    assert not errors, errors
    assert len(seen) == 160 and all(rows in expected for rows in seen)


def _answer_in_child(settings: Settings, question: Question, results) -> None:
    results.put(answer(settings, question))


def test_a_forked_child_answers_with_a_database_of_its_own(tmp_path) -> None:
    settings = make_world(tmp_path / "data", seed=9)
    week = Question(TODAY - timedelta(days=6), TODAY)
    expected = answer(settings, week)  # the parent's database exists before the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_answer_in_child, args=(settings, week, results))
    child.start()
    try:
        assert results.get(timeout=60) == expected
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
    assert answer(settings, week) == expected
