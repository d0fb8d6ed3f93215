# The verbs a person types. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every package at the version `make lock` resolved, with its hashes; torch is the one exception (below).
LOCK := requirements.lock
# torch==X from pyproject.toml. pip installs it alone, without hashes: here the CPU wheel on this machine's disk, on a
# GPU host PyPI's CUDA wheel, each with the exact CUDA libraries (none for the CPU build) its own metadata pins.
TORCH := $(shell sed -n 's/^ *"\(torch==[^"]*\)",.*/\1/p' pyproject.toml)
# torch and the libraries only PyPI's Linux build of it needs: kept out of the lock and the Bento's pins.
TORCH_BUILD := torch triton cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti \
	nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver \
	nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
export PIPELINE_HOME ?= $(CURDIR)/.pipeline_home
# A profile's environment file: `make up ENV_FILE=infra/prod.env` is the production profile.
ENV_FILE ?=
PIPELINES := $(BIN)/python -m pipelines $(if $(ENV_FILE),--env-file $(ENV_FILE))

.PHONY: help install run year up down serve status stop rollback test test-year-slice bench bench-scale lint lock clean

help: ## List every target with what it does
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(LOCK) infra/system-packages.sh
	@infra/system-packages.sh
	@echo "Setting up $(VENV) with the pinned stack (a few minutes the first time)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	@# The lock, every file checked against its hash; then torch alone, whose dependencies the lock already holds
	@# (pip takes the local CPU wheel here, PyPI's CUDA wheel on GPU hosts); then the project itself, without
	@# dependencies; pip check fails when pyproject.toml asks for something the lock lacks (run make lock).
	@$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	@$(BIN)/pip install --quiet $(TORCH)
	@$(BIN)/pip install --quiet --no-deps -e .
	@problems=$$($(BIN)/pip check) || { echo "$$problems" >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP) ## Install haproxy, wrk and chromium if missing, create .venv with the pinned stack (only when pins change)

run: $(STAMP) ## Run the pipeline through Airflow on embedded defaults (demo window 2013-01-01..03-31)
	@$(PIPELINES) run

year: $(STAMP) ## Run 2013 as production under Airflow's scheduler, every day from April (resumable; START=/END= for a slice)
	@$(PIPELINES) year $(if $(START),--start $(START)) $(if $(END),--end $(END))

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

test: $(STAMP) ## Run the whole test suite (unit, data, dags, integration, e2e), a file per worker on two workers
	@$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --ignore=$(YEAR_SLICE)

# Not in make test: a clean-clone CI with it took 25 min 59 s (over the 25-minute aim), and beside it a deployment
# test's failover under load failed once. Alone, about 7 minutes.
YEAR_SLICE := tests/e2e/test_year_slice.py
test-year-slice: $(STAMP) ## A week of July 2013 under the scheduler (make year's slice): drift retrain, deploy, a re-run day, nothing lost
	@$(BIN)/python -m pytest -p no:randomly $(YEAR_SLICE)

bench: $(STAMP) ## Benchmark ingestion, validation, features (vs stock Feast), training, serving (vs bare BentoML); writes $PIPELINE_HOME/bench/results.json
	@$(BIN)/python -m benchmarks $(if $(ENV_FILE),--env-file $(ENV_FILE))

bench-scale: $(STAMP) ## The year's feed at 1x, 3x and 10x through ingest, validation, features, materialization, retrieval: time and peak memory per stage, docs/scale_curve.png
	@$(BIN)/python -m benchmarks.scale --png docs/scale_curve.png

lint: $(STAMP) ## ruff (with Airflow's AIR rules), the import contracts, every import declared (deptry), mypy on pipelines/, bandit
	@$(BIN)/ruff check .
	@$(BIN)/lint-imports
	@$(BIN)/deptry .
	@$(BIN)/mypy
	@$(BIN)/bandit --quiet --configfile pyproject.toml --recursive pipelines services dags

# uv resolves (for Python 3.11 on Linux x86_64); pip installs. Pins already in the files are kept unless
# pyproject.toml or services/requirements.in no longer allow them; UPGRADE=1 moves everything to the newest allowed.
UV_COMPILE = $(BIN)/uv pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--annotation-style line --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)

lock: ## Resolve pyproject.toml (with the dev extra) into requirements.lock with hashes, and the Bento's pins from it
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install --quiet "$$(grep -m1 -o '^uv==[^ ]*' $(LOCK))"
	@$(UV_COMPILE) --generate-hashes --extra dev $(foreach p,$(TORCH_BUILD),--no-emit-package $(p)) \
		pyproject.toml -o $(LOCK)
	@$(UV_COMPILE) -c $(LOCK) -c <(echo '$(TORCH)') \
		$(foreach p,$(filter-out torch,$(TORCH_BUILD)),--no-emit-package $(p)) \
		services/requirements.in -o services/requirements.txt
	@sed -i 's|-c /dev/fd/[0-9]*|pyproject.toml|' services/requirements.txt
	@sed -i "2a # torch ($(TORCH) in pyproject.toml) and its CUDA libraries are not here: make install adds them." $(LOCK)
	@if grep -qE '^(torch|triton|cuda-|nvidia-(cu|nccl|nv))' $(LOCK); then \
		echo "$(LOCK) pins a package of torch's CUDA build: add it to TORCH_BUILD in the Makefile" >&2; exit 1; fi

clean: ## Stop everything make up or make run started, delete everything the embedded profile wrote ($PIPELINE_HOME)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m pipelines down > /dev/null; fi
	rm -rf "$(PIPELINE_HOME)"
