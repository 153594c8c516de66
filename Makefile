# The two commands of the README (run, test), the fast lane of the tests, and the benchmarks.
SHELL := /bin/bash
# uv from PATH, else the one `make uv` installs with pip (run as a module, wherever pip put it).
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
WORLD ?= worlds/demo
CUSTOMERS ?= 10000
DAYS ?= 90
HOST ?= 127.0.0.1
PORT ?= 3000
BRAND_FILE ?= $(CURDIR)/examples/brand.yaml
# apt-get through sudo only when not root and sudo exists (a root container has no sudo).
SUDO := $(shell command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo)

.PHONY: run test test-fast install install-dev uv lint check bench chromium redis postgres lab

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

install: uv
	$(UV) sync --frozen --no-dev

install-dev: uv
	$(UV) sync --frozen

## Simulate a world, run the whole pipeline on it, render one email for the demo brand and serve the champions on
## $(HOST):$(PORT). SENDWISE_BRAND_FILE (default: the demo brand) is the brand the emails are rendered for.
run: install
	@test -f $(WORLD)/truth/world.json || $(UV) run --no-sync sendwise simulate $(WORLD) --customers $(CUSTOMERS) --days $(DAYS)
	$(UV) run --no-sync sendwise pipeline --data $(WORLD)
	@export SENDWISE_BRAND_FILE=$(BRAND_FILE); \
	token=$${SENDWISE_API_TOKEN:-$$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')}; \
	first=$$($(UV) run --no-sync python -c "import pandas as pd; c = pd.read_parquet('feature_tables/customer_features.parquet'); print(c.loc[c.email_eligible > 0, 'customer_id'].iloc[0])"); \
	echo; echo "an email for $$first, rendered for the brand of $$SENDWISE_BRAND_FILE:"; \
	$(UV) run --no-sync sendwise render --customer $$first --topic outdoor --out emails || exit 1; \
	echo; echo "sendwise serves on http://$(HOST):$(PORT)"; echo "token: $$token"; echo "try:"; \
	echo "  curl -s -X POST http://$(HOST):$(PORT)/v1/decide -H 'Authorization: Bearer $$token' -H 'Content-Type: application/json' -d '{\"recipients\": [{\"customer_id\": \"$$first\"}], \"campaign\": {\"campaign_id\": \"demo\"}}'"; \
	echo "then render the email of the decision_id it answers:"; \
	echo "  curl -s -X POST http://$(HOST):$(PORT)/v1/render -H 'Authorization: Bearer $$token' -H 'Content-Type: application/json' -d '{\"decision_id\": \"d-...\"}'"; echo; \
	SENDWISE_API_TOKEN=$$token $(UV) run --no-sync sendwise serve --host $(HOST) --port $(PORT)

## Install what the tests need and run the whole suite (CI runs this): minutes, most of them the pipeline run
## on a small world that the slow tests share, and the real `bentoml serve`.
test: install-dev check chromium redis postgres
	$(UV) run --no-sync pytest -q --durations=25

## The fast lane: every test that needs neither that pipeline run nor a served model (`-m "not slow"`), in under
## a minute. One OpenMP thread: on a busy two-core machine, LightGBM's and BLAS's threads wait on each other.
test-fast: install-dev chromium redis
	OMP_NUM_THREADS=1 $(UV) run --no-sync pytest -q -m "not slow"

## Debian's chromium, which the browser tests drive through Playwright (tests/browser.py; Playwright never
## downloads a browser here): installed once, when missing. The package lists are read first, since a fresh
## container has none.
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium, the browser that checks rendered emails"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

## Debian's redis-server: the tests start their own on a free port (tests/redis_server.py) to run the service
## on a Redis online store shared by several processes. Installed once, when missing.
redis:
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server, the online store the scale tests share"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

## Debian's PostgreSQL: the tracking-server tests start their own cluster on a free port
## (tests/postgres_server.py) as the database of a real `mlflow server`. Installed once, when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing postgresql, the database MLflow's server is tested on"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

## JupyterLab on notebooks/ (the `notebooks` dependency group), started with the home's environment
## (Settings.activate: SENDWISE_HOME, default the repository, with MLflow, matplotlib, Jupyter and IPython
## writing there rather than in the user's home). LAB_ARGS go to jupyter lab, e.g. LAB_ARGS="--port 8889".
LAB_ARGS ?=
LAB_MAIN = import os, sys; from sendwise.settings import Settings; Settings().activate(); os.execvp(sys.argv[1], sys.argv[1:])
lab: uv
	$(UV) sync --frozen --group notebooks
	$(UV) run --no-sync python -c "$(LAB_MAIN)" jupyter lab notebooks $(LAB_ARGS)

lint:
	$(UV) run --no-sync ruff check .

## The static checks `make test` runs first: ruff, the import contracts of the layers (.importlinter) and mypy
## (pyproject.toml: every def typed in sendwise, features, serving and training).
check:
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync lint-imports
	$(UV) run --no-sync mypy

## Run the benchmarks and print their table (bench/README.md says what each measures); e.g. make bench BENCH_ARGS="--quick".
BENCH_ARGS ?=
bench: install-dev
	@command -v wrk >/dev/null 2>&1 || { echo "installing wrk, the load generator of the single-recipient benchmarks"; \
		$(SUDO) apt-get install -y -qq wrk >/dev/null; }
	MLFLOW_DISABLE_TELEMETRY=true $(UV) run --no-sync python -m bench $(BENCH_ARGS)
