# carebus developer entry points. Works on a fresh Debian machine with python3:
#   make run    install, start the local stack (`carebus up`), play the demo, show status
#   make stop   stop the local stack (`carebus down`)
#   make test   install, lint, type-check, and run the whole test suite (unit + integration)
#   make lint   ruff + mypy + the import contracts (docs/architecture.md)
#   make bench  the benchmarks (throughput, latency, memory) beside raw Kafka on the same box

SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
CAREBUS := $(VENV)/bin/carebus
STAMP := $(VENV)/.installed

.PHONY: install tools run stop status test lint unit integration bench

install: tools $(STAMP)

# Java runs the local Kafka broker, Maven fetches its jars, docker-compose validates the
# production stack description, chromium + chromium-driver run the browser test (tests/e2e)
# offline, prometheus brings promtool, which checks and unit-tests the alerting rules
# (infra/prometheus). Debian's packages, installed once; PostgreSQL is installed by
# `carebus up` / the test stack when it is missing.
tools:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "needed: apt-get install -y --no-install-recommends$$missing (as root)" >&2; exit 1; \
	  fi; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# Reinstalled only when pyproject.toml changes (the stamp is newer otherwise).
$(STAMP): pyproject.toml
	@if [ ! -x $(PYTHON) ]; then \
	  python3 -m venv $(VENV) || { \
	    echo "python3 -m venv failed; on Debian: apt-get install -y python3-venv" >&2; exit 1; }; \
	fi
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: install
	$(CAREBUS) up
	$(PYTHON) -m producers.scenario
	$(CAREBUS) status

stop:
	@if [ -x $(CAREBUS) ]; then $(CAREBUS) down; else echo "not installed; nothing to stop"; fi

status: install
	$(CAREBUS) status

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest

unit: install
	$(VENV)/bin/pytest tests/unit

integration: install
	$(VENV)/bin/pytest tests/integration

# Benchmarks (not part of `make test`, which runs only their smoke test): prints one table and
# saves it with the machine's description under bench/results/. See docs/performance.md.
bench: install
	$(PYTHON) -m bench
