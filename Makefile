# Two commands matter: `make run` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DB ?= sqlite:///./var/dartwing_jobs.db
PYTEST_ARGS ?=

.PHONY: run test lint unit install clean bench chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	DARTWING_JOBS_DATABASE_URL=$(DB) $(BIN)/python -m dartwing_jobs.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# Unit and integration tests run in parallel (each test process has its own
# databases); system tests start real processes and inject faults (one restarts
# PostgreSQL), so they run alone afterwards.
test: $(STAMP) lint
	$(BIN)/pytest -n 3 tests/unit tests/integration $(PYTEST_ARGS)
	$(BIN)/pytest tests/system $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# Debian's chromium for the dashboard's browser tests (root on CI and dev machines).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
