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

.PHONY: run test bench lint clean browser lock vendor

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

# page_thread.py drives Debian's chromium (the browser target); without it, it says so.
bench: $(DEV_STAMP) browser
	$(BIN)/python bench/scope_overhead.py
	$(BIN)/python bench/ws_load.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/streaming_overhead.py
	$(BIN)/python bench/model_stream.py
	$(BIN)/python bench/cancel_latency.py
	$(BIN)/python bench/approvals.py
	$(BIN)/python bench/multitask.py
	$(BIN)/python bench/mcp_runs.py
	$(BIN)/python bench/adapters.py
	$(BIN)/python bench/page_thread.py

# The chat page's Markdown renderer and sanitizer, pinned in src/web/static/vendor/package.json
# and its lock (change a version there, then `npm install --package-lock-only` in that folder):
# installed with `npm ci` in a scratch folder, so no node_modules lands in the sources, and
# their browser builds and licences copied in. The page loads them as they are, with no build
# step; only the source-map comment goes, since the maps are not shipped.
VENDOR := src/web/static/vendor
vendor:
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	cp $(VENDOR)/package.json $(VENDOR)/package-lock.json "$$scratch"/ && \
	(cd "$$scratch" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) && \
	modules="$$scratch/node_modules" && \
	sed '/^\/\/# sourceMappingURL=/d' "$$modules/marked/lib/marked.esm.js" > $(VENDOR)/marked.esm.js && \
	sed '/^\/\/# sourceMappingURL=/d' "$$modules/dompurify/dist/purify.es.mjs" > $(VENDOR)/purify.es.mjs && \
	cp "$$modules/marked/LICENSE" $(VENDOR)/marked.LICENSE.md && \
	cp "$$modules/dompurify/LICENSE" $(VENDOR)/purify.LICENSE && \
	echo "vendored: marked $$(node -p 'require(process.argv[1]).version' "$$modules/marked/package.json")," \
		"dompurify $$(node -p 'require(process.argv[1]).version' "$$modules/dompurify/package.json")"

# After changing dependencies in pyproject.toml: new pins (and hashes) for both targets.
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet pip-tools
	$(PIP_COMPILE) -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra dev -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
