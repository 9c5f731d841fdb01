# Every target builds .venv from the lock files first; nothing needs installing by hand.
# `make run` installs what serving needs (requirements.lock); `make test` adds the dev tools
# (requirements-dev.lock). Both are pinned with hashes; `make lock` refreshes them from
# pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PIP_COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	--no-emit-index-url --no-emit-find-links

.PHONY: run test bench lint clean browser lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(DEV_STAMP): requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/isochat serve

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The browser tests drive Debian's chromium: installed here where apt-get can (as root);
# where it cannot, they are skipped, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
		echo "chromium could not be installed: the browser tests will be skipped"

# Two pytest processes: most tests wait on servers, processes and sockets, not on a core.
test: lint browser
	$(BIN)/pytest -n 2

bench: $(DEV_STAMP)
	$(BIN)/python bench/scope_overhead.py
	$(BIN)/python bench/ws_load.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/streaming_overhead.py
	$(BIN)/python bench/cancel_latency.py
	$(BIN)/python bench/approvals.py
	$(BIN)/python bench/multitask.py
	$(BIN)/python bench/mcp_runs.py
	$(BIN)/python bench/adapters.py

# After changing dependencies in pyproject.toml: new pins (and hashes) for both targets.
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet pip-tools
	$(PIP_COMPILE) -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra dev -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
