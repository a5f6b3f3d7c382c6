# carebus developer entry points. Works on a fresh Debian machine with python3:
#   make run    install, start the local stack (`carebus up`), play the demo, show status
#   make stop   stop the local stack (`carebus down`)
#   make test   install, lint, type-check, and run the whole test suite (unit + integration)
#   make lint   ruff + mypy + the import contracts (docs/architecture.md)
#   make fuzz   every HTTP service's OpenAPI fuzzed with schemathesis, >= 100,000 cases (docs/reliability.md)
#   make faults the fault tests: five faults under steady load, ~30 min (docs/reliability.md)
#   make bench  the benchmarks (throughput, latency, memory) beside raw Kafka on the same box
#   make lock   regenerate the hashed lock files in requirements/ from pyproject.toml
#   make audit  known vulnerabilities of the locked versions (pip-audit)
#   make images-check  whether each pinned image digest is still its tag's (needs Docker Hub)

SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
CAREBUS := $(VENV)/bin/carebus
STAMP := $(VENV)/.installed

.PHONY: install tools run stop status test lint unit integration fuzz faults bench bench-smoke lock audit images-check

install: tools $(STAMP)

# Java runs the local Kafka broker, Maven fetches its jars, docker-compose validates the
# production stack description, chromium + chromium-driver run the browser test (tests/e2e)
# offline, prometheus brings promtool, which checks and unit-tests the alerting rules
# (infra/prometheus), nginx checks the TLS proxy's configuration (`nginx -t`), with its stream
# module (MLLP over TLS), which Debian builds as a module of its own. Debian's packages, installed
# once; PostgreSQL is installed by `carebus up` / the test stack when it is missing.
tools:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$$missing libnginx-mod-stream"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "needed: apt-get install -y --no-install-recommends$$missing (as root)" >&2; exit 1; \
	  fi; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# Every dependency, carebus's build tools included, comes from the lock with its hashes
# (pip refuses anything else); carebus itself is then installed without resolving anything.
# Reinstalled only when the lock or pyproject.toml changes (the stamp is newer otherwise).
LOCK := requirements/dev.lock
PIP_LOCK := requirements/pip.lock
$(STAMP): pyproject.toml $(LOCK) $(PIP_LOCK)
	@if [ ! -x $(PYTHON) ]; then \
	  python3 -m venv $(VENV) || { \
	    echo "python3 -m venv failed; on Debian: apt-get install -y python3-venv" >&2; exit 1; }; \
	fi
	$(PYTHON) -m pip install --quiet --require-hashes -r $(PIP_LOCK)
	$(PYTHON) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
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
	$(VENV)/bin/pytest -n 2 --dist loadfile

unit: install
	$(VENV)/bin/pytest tests/unit

integration: install
	$(VENV)/bin/pytest tests/integration

# The fuzzer (not part of `make test`, which runs a small sample of the same tests, 5 examples
# per operation): schemathesis against every HTTP service's live OpenAPI on a real test stack,
# at least 100,000 cases (FUZZ_EXAMPLES per operation and phase, passed on as
# CAREBUS_FUZZ_EXAMPLES; 5000 reach it). Prints the figures and writes them to the "Fuzzing"
# section of docs/reliability.md. No per-test timeout: one service's operations take minutes.
FUZZ_EXAMPLES ?= 5000
fuzz: install
	CAREBUS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CAREBUS_FUZZ_REPORT=1 $(VENV)/bin/pytest tests/fuzz --timeout 0 -q

# The fault tests (not part of `make test`, which runs a short smoke of one scenario,
# tests/integration/test_faults_smoke.py): each scenario of tests/faults on a fresh test stack
# under a steady load through the gateway, failing on any lost, doubled or reordered delivery,
# any 5xx but 503, or no recovery. CAREBUS_FAULT_SECONDS, _RATE, _PERSONS, _OUTAGE_SECONDS size
# them (defaults: about 30 minutes in all). The figures of every scenario that ran are written
# to the "Fault tests" section of docs/reliability.md, failed ones too; the run fails if any did.
faults: install
	rm -rf build/faults
	$(VENV)/bin/pytest tests/faults -q -p no:cacheprovider; status=$$?; \
	$(PYTHON) -m tests.faults.report; exit $$status

# Benchmarks (not part of `make test`): prints one table and saves it with the machine's
# description under bench/results/. See docs/performance.md.
bench: install
	$(PYTHON) -m bench

# Whether the benchmark harness still measures every section (`python -m bench --quick`, tiny
# sizes, no figure judged): about 5 minutes, since every section starts its own broker and
# database, so it is a target of its own rather than part of `make test`.
bench-smoke: install
	$(VENV)/bin/pytest tests/bench -q -p no:cacheprovider

# The lock files: base.lock (what the image runs), dev.lock (base + the dev tools); both with
# carebus's build tools (requirements/build.in), every version pinned and every file hashed,
# for Python 3.11 on any platform. pip.lock is pip itself, installed first (requirements/pip.in
# says why). Run after changing a dependency in pyproject.toml.
lock: install
	$(VENV)/bin/uv pip compile requirements/pip.in --python-version 3.11 \
	  --generate-hashes --universal -q -o requirements/pip.lock
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --python-version 3.11 \
	  --generate-hashes --universal -q -o requirements/base.lock
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --extra dev \
	  --python-version 3.11 --generate-hashes --universal -q -o requirements/dev.lock

# Known vulnerabilities of every locked version: pip-audit --strict against the first advisory
# service that answers (PyPI's advisory data, else OSV); none reachable is a failure that says
# so, never a silent pass (carebus_dev/advisories.py, docs/security.md).
audit: install
	$(PYTHON) -m carebus_dev.advisories

# Whether every image pinned by digest (docker-compose.yml, Dockerfile) is still its tag's, asked
# of Docker Hub's registry API; an image it cannot check fails the run. Needs network access, so
# it is not part of `make test` and runs nowhere in CI. See infra/images.md.
images-check: install
	$(PYTHON) -m carebus_dev.images check
