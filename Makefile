# stackbook: `make run` runs the main job, `make test` runs the test suite.
# Both set everything up on a fresh machine and reuse what exists on a second call.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STACKBOOK := $(BIN)/stackbook
STAMP := $(VENV)/.installed
# No dependency may phone home (see README "Privacy").
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DO_NOT_TRACK := 1
export PLOOMBER_STATS_ENABLED := false
export PLOOMBER_VERSION_CHECK_DISABLED := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := False

.PHONY: help setup airflow test-slow airflow-up airflow-down system-deps lock lint run test book up down status bench lab clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(UV): $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9

$(STAMP): requirements.lock pyproject.toml | $(UV)
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip sync --quiet --compile-bytecode requirements.lock
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip install --quiet --no-deps -e .
	$(BIN)/python -m bash_kernel.install --sys-prefix >/dev/null  # the tests' non-Python kernel (idempotent)
	touch $(STAMP)

setup: system-deps $(STAMP)  ## create .venv and install the locked dependencies

airflow: $(STAMP)  ## Airflow's own virtual environment (.venv-airflow) from infra/airflow/requirements.lock
	@bash infra/airflow/setup.sh

airflow-up: up airflow  ## a local Airflow (scheduler, DAG processor, API server) running the generated DAGs
	$(STACKBOOK) schedule airflow-local up

airflow-down:  ## stop the local Airflow and every process it started
	@if [ -x $(STACKBOOK) ]; then $(STACKBOOK) schedule airflow-local down; fi

system-deps:  ## install missing system packages (Chromium for the browser test, openssl, promtool for the alert rules)
	@bash infra/scripts/system-deps.sh

lock:  ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra test -p 3.11 -o requirements.lock

up: setup  ## start the project-local PostgreSQL
	$(STACKBOOK) up

down:  ## stop the project-local PostgreSQL
	@if [ -x $(STACKBOOK) ]; then $(STACKBOOK) down; fi

status:  ## whether the database runs, and its URL
	$(STACKBOOK) status

run: up  ## the main job on the embedded defaults: the daily pipeline, then the book
	$(STACKBOOK) pipeline run daily -e dev
	$(STACKBOOK) book -e dev

# Runbooks in data-flow order: quality checks what ingest loaded, transform builds on it, train reads the
# marts; the train runbooks are named one by one because pytest runs a folder's files alphabetically and
# scoring, drift, serving and rollback need the champion that train_customer_model registers.
TRAIN_RUNBOOKS := $(addprefix runbooks/train/,train_customer_model.ipynb score_customers.ipynb \
	check_model_drift.ipynb serve_model.ipynb rollback_model.ipynb)
RUNBOOK_DIRS := runbooks/ops runbooks/provision runbooks/ingest runbooks/quality runbooks/transform \
	$(TRAIN_RUNBOOKS) runbooks/audit runbooks/dr

lint: $(STAMP)  ## ruff over src, tests and benchmarks (rules in pyproject.toml)
	$(BIN)/ruff check src tests benchmarks

# The tests use their own database and state folder (tests/conftest.py); check_untouched.py proves
# that your ledger, MLflow runs, run store and book are as they were before.
UNTOUCHED := $(VENV)/.untouched.json

test: lint up airflow  ## lint, the test suite (all but the slow tests), then every runbook with its small defaults (nbmake)
	$(BIN)/python tests/check_untouched.py snapshot $(UNTOUCHED)
	$(BIN)/python -m pytest tests -m "not slow" --nbmake $(RUNBOOK_DIRS) --nbmake-timeout=900 --durations=15; status=$$?; \
		$(BIN)/python tests/check_untouched.py compare $(UNTOUCHED) && exit $$status

test-slow: up airflow  ## the slow integration tests only (Airflow's scheduler, the daily pipeline on a managed PostgreSQL)
	$(BIN)/python tests/check_untouched.py snapshot $(UNTOUCHED)
	$(BIN)/python -m pytest tests -m slow; status=$$?; \
		$(BIN)/python tests/check_untouched.py compare $(UNTOUCHED) && exit $$status

book: up  ## build the book (_build/html) with the evidence of the latest dev runs
	$(STACKBOOK) book -e dev

lab: up  ## JupyterLab on the project, environment loaded
	$(STACKBOOK) lab

bench: up airflow  ## ratio benchmarks against their floors (not part of make test; figures in benchmarks/README.md)
	$(BIN)/python benchmarks/runner_overhead.py
	$(BIN)/python benchmarks/loader_throughput.py
	$(BIN)/python benchmarks/loader_memory.py
	$(BIN)/python benchmarks/loader_folder.py
	$(BIN)/python benchmarks/dbt_mlflow.py
	$(BIN)/python benchmarks/pipeline_overhead.py
	$(BIN)/python benchmarks/book_rebuild.py
	$(BIN)/python benchmarks/book_ledger_scale.py
	$(BIN)/python benchmarks/dr_drill.py
	$(BIN)/python benchmarks/k8s_render_validate.py
	$(BIN)/python benchmarks/audit_secrets_scan.py
	$(BIN)/python benchmarks/airflow_overhead.py
	$(BIN)/python benchmarks/notify_overhead.py
	$(BIN)/python benchmarks/evidence_chain.py
	$(BIN)/python benchmarks/quality_overhead.py
	$(BIN)/python benchmarks/serving_latency.py
	$(BIN)/python benchmarks/book_chain.py
	$(BIN)/python benchmarks/snapshot.py
	$(BIN)/python benchmarks/resume.py

clean:  ## remove the virtual environment (keeps .stackbook: your database and runs)
	rm -rf $(VENV)
