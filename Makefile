# The two commands of a fresh machine: `make run` and `make test`.
# `make run PORT=9000 HOST=0.0.0.0`; `make test PYTHON=python3.13 VENV=.venv-313
# DJANGO='Django>=6.1,<7'` runs the suite on another Python and Django (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8787
DJANGO ?=

.PHONY: run test lint format bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The example project needs the `example` extra (dj-database-url) beside the app.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[example]' $(if $(DJANGO),'$(DJANGO)')
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]' $(if $(DJANGO),'$(DJANGO)')
	touch $@

run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed-test
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Benchmarks (issue 5): the bench extras, wrk and nginx (Debian packages, when
# root with apt-get; a peer whose tool is missing is skipped with a note), then
# bench/run.py. QUICK=1: a smoke run of a few minutes, written under /tmp.
# BENCH_ONLY=W1,W3 and BENCH_TARGETS=ours,bare narrow it down.
$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.installed-bench
	@missing=""; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bench: installing$$missing"; \
	    (apt-get update -q && apt-get install -y -q $$missing) >/dev/null \
	      || echo "bench: could not install$$missing: the workloads that need them are skipped"; \
	  else \
	    echo "bench: missing$$missing (needs root and apt-get): the workloads that need them are skipped"; \
	  fi; \
	fi
	QUICK=$(QUICK) BENCH_ONLY=$(BENCH_ONLY) BENCH_TARGETS=$(BENCH_TARGETS) $(PY) -m bench.run

# Hostile conditions (issue 6): every fault scenario against real servers (serve
# and gunicorn gevent workers sharing a Redis and a PostgreSQL of the suite's own),
# figures to docs/reliability.md; the short form runs in `make test`
# (tests/test_faults.py). `make soak`: ten minutes of mixed load with faults,
# sampling the servers' memory (not run in CI). FAULTS_ONLY=slow,down narrows it.
.PHONY: faults soak

faults: $(VENV)/.installed-test
	$(PY) -m faults.run $(if $(FAULTS_ONLY),--only $(FAULTS_ONLY))

soak: $(VENV)/.installed-test
	$(PY) -m faults.soak
