# certctl — the two commands a new user runs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIR ?= desired-state

.PHONY: run test lint schemas bench unit integration e2e system-deps venv clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
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

## test: install what the tests need (Debian packages, Python env), lint, run every test tier
test: system-deps $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

system-deps:
	@bash scripts/install-system-deps

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy reconciler
	$(BIN)/lint-imports

schemas: $(STAMP)
	$(BIN)/certctl schema --out schemas

## bench: plan speed/memory at 1,000 and 10,000 certificates, ACME throughput, daemon latency
bench: system-deps $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf run .certctl-state bench/out
