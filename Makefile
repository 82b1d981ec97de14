# The commands in README.md. `make test` and `make demo` install first when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
INSTALLED := $(VENV)/.installed
DOCS_PORT ?= 8081

.PHONY: install test demo docs lock clean

install: $(INSTALLED)

# Reinstalls whenever the lock or the project's metadata changes.
$(INSTALLED): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r requirements.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	touch $@

test: install
	$(BIN)/pytest

demo: install
	$(BIN)/python -m stream_worker.demo

# The dbt docs site on 127.0.0.1:$(DOCS_PORT). Generating it opens the warehouse, so it
# takes the warehouse lock that every batch build holds.
docs: export LAMBDAFLOW_DATA_DIR ?= $(CURDIR)/data
docs: install
	mkdir -p $(LAMBDAFLOW_DATA_DIR)/warehouse
	cd dbt_project && flock $(LAMBDAFLOW_DATA_DIR)/warehouse/write.lock \
		../$(BIN)/dbt docs generate --profiles-dir . --quiet
	cd dbt_project && ../$(BIN)/dbt docs serve --profiles-dir . --host 127.0.0.1 --port $(DOCS_PORT) --no-browser

# Re-resolve requirements.txt from pyproject.toml's direct dependencies.
lock:
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --quiet -o requirements.txt

clean:
	rm -rf $(VENV) data .pytest_cache
