# The verbs a person types. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIPELINE_HOME ?= $(CURDIR)/.pipeline_home
# A profile's environment file: `make up ENV_FILE=infra/prod.env` is the production profile.
ENV_FILE ?=
PIPELINES := $(BIN)/python -m pipelines $(if $(ENV_FILE),--env-file $(ENV_FILE))

.PHONY: help install run up down serve status stop rollback test bench lint lock clean

help: ## List every target with what it does
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt infra/system-packages.sh
	@infra/system-packages.sh
	@echo "Setting up $(VENV) with the pinned stack (a few minutes the first time)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	@# torch first and alone: pip takes the local CPU wheel here (a CUDA wheel on GPU hosts).
	@$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	@$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Install haproxy, wrk and chromium if missing, create .venv with the pinned stack (only when pins change)

run: $(STAMP) ## Run the pipeline through Airflow on embedded defaults (demo window 2013-01-01..03-31)
	@$(PIPELINES) run

up: $(STAMP) ## Start Airflow (UI on 127.0.0.1:8080, login printed), the mail server and the model service; ENV_FILE=infra/prod.env: the production profile
	@$(PIPELINES) up

down: $(STAMP) ## Stop everything make up started (same ENV_FILE), by process id
	@$(PIPELINES) down

serve: $(STAMP) ## Serve the champion at 127.0.0.1:3000 (Bento, blue/green behind HAProxy); what make run leaves running
	@$(PIPELINES) deploy

status: $(STAMP) ## Show what the model service serves: live slot, model version, Bento, standby
	@$(PIPELINES) status

stop: $(STAMP) ## Stop the model service (front door and both slots) started by make run or make serve
	@$(PIPELINES) stop

rollback: $(STAMP) ## Make the previous champion the champion again and switch the service back to it
	@$(PIPELINES) rollback

test: $(STAMP) ## Run the whole test suite (unit, data, dags, integration, e2e)
	@$(BIN)/python -m pytest

bench: $(STAMP) ## Benchmark ingestion, validation, features (vs stock Feast), training, serving (vs bare BentoML); writes $PIPELINE_HOME/bench/results.json
	@$(BIN)/python -m benchmarks $(if $(ENV_FILE),--env-file $(ENV_FILE))

lint: $(STAMP) ## ruff (with Airflow's AIR rules) and mypy on pipelines/
	@$(BIN)/ruff check .
	@$(BIN)/mypy

lock: $(STAMP) ## Re-pin constraints.txt from the current environment
	@{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

clean: ## Stop everything make up or make run started, delete everything the embedded profile wrote ($PIPELINE_HOME)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m pipelines down > /dev/null; fi
	rm -rf "$(PIPELINE_HOME)"
