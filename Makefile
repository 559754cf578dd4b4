# Two commands matter: `make run` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DB ?= sqlite:///./var/dartwing_jobs.db
PYTEST_ARGS ?=

.PHONY: run test lint unit install clean bench soak chromium

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

# Benchmarks against peers: their own virtualenv, outside .venv (see bench/README.md).
BENCH_VENV := .bench-venv
BENCH_ARGS ?=
SOAK_ARGS ?=

bench:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements-peers.txt -e .
	$(BENCH_VENV)/bin/python bench/run_all.py $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python bench/http_load.py

# Ten minutes of mixed jobs with a worker SIGKILLed every minute (not in CI).
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# Debian's chromium for the dashboard's browser tests (root on CI and dev machines).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
