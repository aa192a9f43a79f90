# creditflow: `make demo` runs the main pipeline on the embedded default; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup demo demo-decay test test-unit lint ui serve clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## create .venv and install creditflow with its dev tools

demo: setup ## run the main pipeline (generated data, SQLite tracking in ./mlflow.db)
	$(VENV)/bin/mlflow run . -e main --env-manager local

demo-decay: setup ## replay 18 months of drifting applicants: score, monitor, retrain, promote (README: Model decay)
	$(VENV)/bin/mlflow run . -e replay --env-manager local

TEST_WORKERS ?= 2  # pytest-xdist workers: most tests wait on servers and subprocesses, so two share 2 cores well

test: setup ## run every test (unit, integration, spark)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

test-unit: setup ## run the fast unit tests only
	$(PY) -m pytest -q -m "not integration and not spark and not slow"

.PHONY: tracking-server
tracking-server: setup ## tracking server on 127.0.0.1:5000 over ./mlflow.db (README: production profile)
	scripts/start_tracking_server.sh --profile local

lint: setup ## ruff over the code and tests
	$(VENV)/bin/ruff check src tests scripts

ui: setup ## the MLflow UI over the local tracking store
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

serve: setup ## REST endpoint for models:/credit-default@champion on port 5001 (serving/README.md)
	$(VENV)/bin/creditflow serve --config serving/online.yaml

clean: ## remove local tracking state and outputs (keeps .venv)
	rm -rf mlruns mlartifacts mlflow.db spark-warehouse outputs replay data/retrain
