# The commands in README.md. `make test` and `make demo` install first when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
INSTALLED := $(VENV)/.installed
DOCS_PORT ?= 8081

.PHONY: install browser test test-all demo bench chaos docs up down lock clean

install: $(INSTALLED)

# Reinstalls whenever the lock, the project's metadata or this recipe changes. Everything is
# compiled to bytecode here: uv does not compile by default, and where PYTHONDONTWRITEBYTECODE is
# set (container images often set it) no process caches what it compiles, so every command,
# Airflow task and test process would compile Airflow, dbt and Polars from source again
# (`import airflow`: 4.0 s without, 2.4 s with).
$(INSTALLED): requirements.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 lambdaflow stream_worker dags bench chaos tests >/dev/null
	touch $@

# Two tiers (README, "Tests"): `test` is the fast default, `test-all` adds the tests marked slow.
# Both spread the test modules over worker processes (most tests wait on Kafka group joins and
# child processes, so three keep two cores busy); a module's tests share one worker and its world.
PYTEST_WORKERS ?= 3
PYTEST := $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadscope

test: install browser
	$(PYTEST) -m "not slow"

test-all: install browser
	$(PYTEST)

# Debian's Chromium and ChromeDriver, for the dashboard's tests in a real browser
# (tests/test_dashboard.py); installed from the package registry when missing.
AS_ROOT := $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null && echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	    $(AS_ROOT) apt-get update -qq && \
	    $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: install
	$(BIN)/python -m lambdaflow.ops.demo

# Every layer against its ceiling or peer; results in bench/results/ (report.md, summary.json,
# PNG plots). QUICK=1: small sizes, minutes (the full run takes much longer); `make test-all` runs it.
bench: install
	$(BIN)/python -m bench $(if $(QUICK),--quick)

# A seeded, randomized fault run checked against the log: kill -9s, rebalances, a paused broker,
# builds and a backfill while events flow. SEED=<n> replays a run; `make test-all` runs a short one.
chaos: install
	$(BIN)/python -m chaos $(if $(SEED),--seed $(SEED))

# The dbt docs site on 127.0.0.1:$(DOCS_PORT), as `make up` serves it: the metrics definition is
# checked first, the site is generated under the warehouse lock that every batch build holds
# (generating opens the warehouse), then served until stopped. Files under <data>/docs.
docs: install
	$(BIN)/python -m lambdaflow.ops.stack docs --port $(DOCS_PORT)

# The stack as long-running services on 127.0.0.1 (broker, archiver, stream worker, a live
# producer, Airflow on 8080, the dbt docs on $(DOCS_PORT)); `up` returns once all are ready
# and prints the URLs and the Airflow login. `down` stops exactly what `up` started.
up: export LAMBDAFLOW_DATA_DIR ?= $(CURDIR)/data
up: export LAMBDAFLOW_DOCS_PORT ?= $(DOCS_PORT)
up: install
	$(BIN)/python -m lambdaflow.ops.stack up --format table

down: export LAMBDAFLOW_DATA_DIR ?= $(CURDIR)/data
down:
	$(BIN)/python -m lambdaflow.ops.stack down --format table

# Re-resolve requirements.txt from pyproject.toml's direct dependencies.
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --quiet -o requirements.txt

clean:
	rm -rf $(VENV) data .pytest_cache
