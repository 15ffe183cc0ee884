# servicerouter: every target is idempotent and works on a fresh machine.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint unit integration demo bench bench-all clean install-venv install-files install-system

# Production install (see README.md, "Production set-up"): the program in its own
# venv under PREFIX, the systemd units, the user, an example environment file.
PREFIX  ?= /opt/servicerouter
DESTDIR ?=

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

# Three workers, a test file each at a time: the suite waits on HAProxy, sockets and
# subprocesses more than it computes (2,177 tests: 498 s on two workers, 346 s on three,
# on 2 cores). The workers claim ports in one folder (tests/integration/conftest.py). In
# a short base folder, removed afterwards: pytest's own plus a worker's folder made
# socket paths of a few tests longer than HAProxy's 97 characters.
test: install lint
	@base=$$(mktemp -d /tmp/srtest.XXXXXX) && \
	  $(VENV)/bin/pytest -q -n 3 --dist loadfile --basetemp="$$base/t"; \
	  rc=$$?; rm -rf "$$base"; exit $$rc

demo: install
	$(PY) -m servicerouter.demo $(DEMO_ARGS)

bench: install
	$(PY) -m benchmarks

bench-all: install
	$(PY) -m benchmarks --all

install-venv:
	python3 -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --no-cache-dir .
	@echo "installed: $(PREFIX)/bin/servicerouter"

install-files:
	install -D -m 0644 contrib/systemd/servicerouter.service $(DESTDIR)/etc/systemd/system/servicerouter.service
	install -D -m 0644 contrib/systemd/servicerouter-haproxy.service $(DESTDIR)/etc/systemd/system/servicerouter-haproxy.service
	install -D -m 0644 contrib/systemd/servicerouter.sysusers $(DESTDIR)/usr/lib/sysusers.d/servicerouter.conf
	install -D -m 0644 README.md $(DESTDIR)/usr/share/doc/servicerouter/README.md
	@test -e $(DESTDIR)/etc/default/servicerouter || install -D -m 0600 contrib/systemd/servicerouter.default $(DESTDIR)/etc/default/servicerouter

install-system: install-venv install-files
	@command -v haproxy >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; }
	@if command -v systemd-sysusers >/dev/null; then systemd-sysusers /usr/lib/sysusers.d/servicerouter.conf; fi
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "next: set SERVICEROUTER_MARATHON in /etc/default/servicerouter, then"
	@echo "      systemctl enable --now servicerouter   (or servicerouter-haproxy beside haproxy.service)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
