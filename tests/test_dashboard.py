"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium through
chromedriver (both started by Selenium and stopped by `quit`, by their PIDs).

A running `lambdaflow serve` over a small world of published files; the page must draw every
metric's charts, mark the boundary, show the numbers `/api/query` answers (which equal the CLI's,
tests/test_serve.py), update without a reload, and log no console error.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from lambdaflow.core import metrics
from lambdaflow.core.days import today
from tests.serve_helpers import start_serve
from tests.serving_world import NAMES, cells, make_world, write_snapshot

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(
            "Debian's chromium and chromium-driver are missing: `make test` installs them (Makefile, `browser`)"
        )
    scratch = tmp_path_factory.mktemp("dashboard")
    data_dir = scratch / "data"
    settings = make_world(data_dir, seed=9, today=today())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_"))}
    env |= {"LAMBDAFLOW_DATA_DIR": str(data_dir), "LAMBDAFLOW_TOPIC": "events"}
    served = start_serve(env, scratch)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2400",
        f"--user-data-dir={scratch / 'chromium'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(scratch / "chromedriver.log")), options=options
    )
    try:
        driver.get(served.url)
        yield settings, served, driver, scratch
    finally:
        driver.quit()
        served.stop()
        shutil.rmtree(scratch / "chromium", ignore_errors=True)


def _refreshed(driver) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.refreshed || 0)"))


def _wait_for_refresh(driver, after: int = 0, timeout: float = 30) -> None:
    WebDriverWait(driver, timeout).until(lambda d: _refreshed(d) > after)


def _chart(driver, chart_id: str) -> dict:
    """A chart's traces and marks, as Plotly holds them on its element."""
    return driver.execute_script(
        """const gd = document.getElementById(arguments[0]);
        return {traces: gd.data.map(t => ({name: t.name, x: t.x, y: t.y})),
                shapes: gd.layout.shapes || [], annotations: (gd.layout.annotations || []).map(a => a.text),
                drawn: gd.querySelectorAll('.main-svg').length};""",
        chart_id,
    )


def _scaled(value: int | None, scale: int) -> float | None:
    return None if value is None else value / scale


def _by_source(chart: dict) -> dict[str, tuple[str, float]]:
    return {x: (trace["name"], y) for trace in chart["traces"] for x, y in zip(trace["x"], trace["y"], strict=True)}


def test_every_metric_is_charted_with_the_numbers_query_answers(page) -> None:
    _, served, driver, _ = page
    _wait_for_refresh(driver)
    day = today()
    daily = served.get(f"/api/query?from={day - timedelta(days=13)}&to={day}").json()
    hourly = served.get(f"/api/query?from={day - timedelta(days=1)}&to={day}&hourly=true").json()
    for metric in metrics.defined():
        scale = 100 if metric.name.endswith("_cents") else 1
        shown = _by_source(_chart(driver, f"daily-{metric.name}"))
        assert shown == {row["event_date"]: (row["source"], _scaled(row[metric.name], scale)) for row in daily}, (
            metric.name
        )
        chart = _chart(driver, f"hourly-{metric.name}")
        assert chart["drawn"] >= 1
        shown = _by_source(chart)
        assert shown == {
            f"{row['event_date']} {row['hour']:02d}:30": (row["source"], _scaled(row[metric.name], scale))
            for row in hourly
        }, metric.name


def test_the_boundary_is_marked_where_the_batch_hands_over(page) -> None:
    settings, _, driver, _ = page
    _wait_for_refresh(driver)
    boundary = json.loads((settings.data_dir / "batch" / "manifest.json").read_text())["boundary"]
    for metric in NAMES:
        chart = _chart(driver, f"hourly-{metric}")
        (line,) = chart["shapes"]
        assert line["x0"] == line["x1"] == boundary[:19].replace("T", " ")
        assert chart["annotations"] == ["boundary"]
    assert driver.find_element("id", "boundary").text == f"boundary: {boundary}"


def test_today_so_far_is_set_against_yesterday_at_the_same_hour(page) -> None:
    _, served, driver, _ = page
    _wait_for_refresh(driver)
    day = today()
    hourly = served.get(f"/api/query?from={day - timedelta(days=1)}&to={day}&hourly=true").json()
    hour = int(driver.execute_script("return new Date().getUTCHours()"))
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#today-table tr[data-metric]')].map(r => ({...r.dataset}))"
    )
    assert [row["metric"] for row in rows] == list(NAMES)
    for row in rows:
        for key, when in (("today", day), ("yesterday", day - timedelta(days=1))):
            expected = sum(
                r[row["metric"]] for r in hourly if r["event_date"] == when.isoformat() and r["hour"] <= hour
            )
            assert int(row[key]) == expected, (row, key)


def test_new_numbers_appear_without_a_reload_and_no_console_error(page) -> None:
    settings, _, driver, scratch = page
    _wait_for_refresh(driver)
    driver.execute_script("window.sameDocument = true")
    before = _refreshed(driver)
    rows = [{**cell, "events": 100_000} for cell in cells(random.Random(1), today(), range(24), NAMES)]
    write_snapshot(settings.data_dir, 0, rows)
    WebDriverWait(driver, 30).until(lambda d: _refreshed(d) > before + 1)
    assert driver.execute_script("return window.sameDocument") is True
    shown = _by_source(_chart(driver, "daily-events"))
    assert shown[today().isoformat()][1] >= 100_000
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    screenshot = scratch / "dashboard.png"
    driver.save_screenshot(str(screenshot))
    assert Path(screenshot).stat().st_size > 10_000
