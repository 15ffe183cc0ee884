# servicerouter: every target is idempotent and works on a fresh machine.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint unit integration demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v haproxy >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "haproxy is not installed and this is not root: run 'sudo apt-get install haproxy' first" >&2; exit 1; fi; \
	  echo "installing haproxy with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)
	@echo "installed: $(VENV)/bin/servicerouter ($$(haproxy -v | head -1))"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q tests/unit

integration: install
	$(VENV)/bin/pytest -q tests/integration

test: install lint
	$(VENV)/bin/pytest -q

demo: install
	$(PY) -m servicerouter.demo

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
