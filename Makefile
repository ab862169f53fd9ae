# One idempotent set-up target feeds both `make demo` and `make test` (and .ci/run).
VENV        ?= .venv
PYTHON      ?= python3.11
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.spotguard-installed
# Debian packages the tests need (real servers, not fakes); empty until a test needs one.
APT_PACKAGES ?=

.PHONY: setup demo test lint typecheck unit clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ -n "$(strip $(APT_PACKAGES))" ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  fi; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/spotguard demo

lint: setup
	$(VENV)/bin/ruff check daemon tests bench
	$(VENV)/bin/ruff format --check daemon tests bench

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest

clean:
	rm -rf $(VENV)
