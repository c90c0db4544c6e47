# certctl — the two commands a new user runs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIR ?= desired-state

.PHONY: run test lint format schemas bench unit integration e2e system-deps venv clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@$(BIN)/python -m compileall -q reconciler  # bytecode now, as a wheel install has (even with PYTHONDONTWRITEBYTECODE)
	@touch $(STAMP)

venv: $(STAMP)

## run: set up, then plan and apply the example desired state (the embedded local CA; no network)
run: $(STAMP)
	@bash scripts/seed-run
	$(BIN)/certctl validate -d $(DIR)
	$(BIN)/certctl apply -d $(DIR)
	@echo; echo "== second run: nothing left to do =="
	$(BIN)/certctl plan -d $(DIR) --detailed-exitcode
	$(BIN)/certctl status -d $(DIR)

PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n $(or $(JOBS),auto)

## test: install what the tests need (Debian packages, Python env), lint, run every test tier in parallel
test: system-deps $(STAMP) lint
	$(PYTEST)

## unit / integration / e2e: one tier each (unit also runs the golden scenarios; JOBS=1 for a serial run)
unit: $(STAMP)
	$(PYTEST) tests/unit tests/scenarios

integration: system-deps $(STAMP)
	$(PYTEST) tests/integration

e2e: system-deps $(STAMP)
	$(PYTEST) tests/e2e

system-deps:
	@bash scripts/install-system-deps

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/ruff format --check reconciler tests bench
	$(BIN)/mypy reconciler tests
	$(BIN)/lint-imports

## format: apply the formatter `make lint` checks
format: $(STAMP)
	$(BIN)/ruff format reconciler tests bench
	$(BIN)/ruff check --fix reconciler tests bench

schemas: $(STAMP)
	$(BIN)/certctl schema --out schemas

## bench: plan speed/memory at 1,000 and 10,000 certificates, local-CA throughput (beside its floor) and ACME (beside certbot,
## lego and a minimal client), daemon latency
bench: $(STAMP)
	@BENCH=1 bash scripts/install-system-deps
	@$(BIN)/python -m compileall -q reconciler  # measure certctl as installed: no start pays for compiling it
	$(BIN)/python bench/run.py

clean:
	rm -rf run .certctl-state bench/out
