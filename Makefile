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

.PHONY: help setup system-deps run test test-fast book up down status lint bench lab clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(UV): $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9

$(STAMP): requirements.lock pyproject.toml | $(UV)
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip sync --quiet requirements.lock
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: system-deps $(STAMP)  ## create .venv and install the locked dependencies

system-deps:  ## install missing system packages (PostgreSQL binaries, Chromium for the browser test)
	@bash infra/scripts/system-deps.sh

lock:  ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra test -p 3.11 -o requirements.lock

up: setup  ## start the project-local PostgreSQL
	$(STACKBOOK) up

down:  ## stop the project-local PostgreSQL
	@if [ -x $(STACKBOOK) ]; then $(STACKBOOK) down; fi

status:
	$(STACKBOOK) status

run: up  ## the main job on the embedded defaults
	$(STACKBOOK) run platform_check -e dev

test: up  ## the whole test suite, then every runbook with its defaults (nbmake)
	$(BIN)/python -m pytest tests --nbmake runbooks --nbmake-timeout=900

lab: up  ## JupyterLab on the project, environment loaded
	$(STACKBOOK) lab

bench: up  ## ratio benchmarks (not part of make test)
	$(BIN)/python benchmarks/runner_overhead.py

clean:  ## remove the virtual environment (keeps .stackbook: your database and runs)
	rm -rf $(VENV)
