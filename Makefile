# Two commands on a fresh clone: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := tests/fidelity
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
# The shared layer and the repo root are importable everywhere, as pytest's pythonpath does for tests.
export PYTHONPATH := $(CURDIR):$(CURDIR)/layers/shared/python
PORT ?= 8000
ORDERS ?= 300
SEED ?= 1
PROFILE ?= light
DYNAMODB ?= dynamodb-local

.PHONY: help run test lint typecheck validate package unit service http fidelity bench chaos clean

help:
	@echo "make run        start the local stack (API on :$(PORT), AWS emulator on :4566) with demo data"
	@echo "make test       lint, type-check, validate the template and state machines, run every test tier"
	@echo "make unit       the unit tier alone (also: make service, make http, make fidelity)"
	@echo "make lint       ruff check and format check"
	@echo "make typecheck  mypy over the whole tree"
	@echo "make validate   cfn-lint on the packaged template, then every state machine filled and checked"
	@echo "make package    build the deployable SAM template and artifacts into build/sam"
	@echo "make bench      checkout benchmark and cost per million orders (DynamoDB Local; installs it first)"
	@echo "                (DYNAMODB=moto: moto's DynamoDB in its own process, the emulator make chaos uses)"
	@echo "make chaos      seeded randomized orders with faults at every seam, then the books checked"
	@echo "                (ORDERS=$(ORDERS) SEED=$(SEED) PROFILE=$(PROFILE); profiles: none, light, hostile)"
	@echo "make clean      remove build outputs and tool caches"

# Reinstall only when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	touch $@

run: $(STAMP)
	$(BIN)/python -m infra.local.stack --api-port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy app.py chalicelib functions infra layers/shared/python/shop tests

validate: $(STAMP) build/sam/template.yaml
	$(BIN)/cfn-lint --ignore-checks I --template build/sam/template.yaml
	$(BIN)/python -m infra.validate_statemachines

test: $(STAMP) $(NODE_STAMP) lint typecheck validate
	$(BIN)/python -m pytest -n 2 --dist loadgroup

unit service http fidelity: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest tests/$@

package: build/sam/template.yaml

build/sam/template.yaml: $(STAMP) app.py infra/template.yaml requirements.txt $(shell find chalicelib functions layers statemachines -type f -not -path '*/__pycache__/*' 2>/dev/null)
	$(BIN)/python -m infra.package

# DynamoDB Local (npm, Java 17) reports consumed capacity, which the cost figures need.
bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m infra.local.bench --dynamodb $(DYNAMODB)

chaos: $(STAMP)
	$(BIN)/python -m infra.local.chaos --orders $(ORDERS) --seed $(SEED) --profile $(PROFILE)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
