# One idempotent set-up target feeds both `make demo` and `make test` (and .ci/run).
VENV        ?= .venv
PYTHON      ?= python3.11
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.spotguard-installed
# spotguard.step's tests install spotguard + fsspec + adlfs into a bare virtualenv with --no-index
# from this wheelhouse; it holds hatchling too, so they rebuild spotguard's wheel from the work
# tree offline rather than trust the copy made here.
WHEELHOUSE  := wheelhouse
WHEEL_STAMP := $(WHEELHOUSE)/.spotguard-filled
# Azurite (Blob Storage emulator) for the checkpoint tests; 3.36+ needs Node >= 21 (we have 20).
AZURITE_VERSION := 3.35.0
NPM_PREFIX  := .cache/npm
AZURITE_STAMP := $(NPM_PREFIX)/.azurite-$(AZURITE_VERSION)
# tests/deploy validates the PodMonitor/PrometheusRule manifests with these models' ajv schemas
# (tests/deploy/validate_crds.mjs) and, for unknown fields, their TypeScript declarations.
PROM_MODELS_VERSION := 6.0.0
TYPESCRIPT_VERSION  := 5.9.3
CRD_MODELS_STAMP := $(NPM_PREFIX)/.prometheus-operator-$(PROM_MODELS_VERSION)-typescript-$(TYPESCRIPT_VERSION)
# Debian packages the tests need (real servers, not fakes): promtool ships in prometheus, amtool in
# prometheus-alertmanager (bookworm: 2.42.0, 0.25.0). python3.11-venv: tests/deploy installs the
# image's agent into a venv of Debian's python3.11, which an unprivileged user can run (pyenv's is
# under /root).
APT_PACKAGES ?= prometheus prometheus-alertmanager python3.11-venv
# spotguard.kfp's tests compile pipelines in a virtualenv of their own (kfp pins requests and
# urllib3 exactly): the `kfp` extra's packages, plus spotguard from the work tree without its deps.
KFP_VENV    := .cache/kfp-venv
KFP_STAMP   := $(KFP_VENV)/.spotguard-kfp-installed

.PHONY: setup demo test lint typecheck unit clean

setup: $(STAMP) $(WHEEL_STAMP) $(AZURITE_STAMP) $(CRD_MODELS_STAMP) $(KFP_STAMP)

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

$(WHEEL_STAMP): $(STAMP)
	@mkdir -p $(WHEELHOUSE)
	$(PY) -m pip freeze --exclude-editable > $(WHEELHOUSE)/constraints.txt
	$(PY) -m pip wheel -q --no-deps -w $(WHEELHOUSE) .
	$(PY) -m pip download -q --only-binary=:all: -d $(WHEELHOUSE) -c $(WHEELHOUSE)/constraints.txt \
	  fsspec adlfs hatchling
	@# The agent's runtime dependencies (no extras), for tests/deploy's offline install of the image.
	$(PY) -m pip download -q --only-binary=:all: -d $(WHEELHOUSE) -c $(WHEELHOUSE)/constraints.txt \
	  $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
	@touch $@

$(KFP_STAMP): pyproject.toml Makefile
	@[ -x $(KFP_VENV)/bin/python ] || $(PYTHON) -m venv $(KFP_VENV)
	$(KFP_VENV)/bin/python -m pip install -q --upgrade pip
	$(KFP_VENV)/bin/python -m pip install -q $$($(PYTHON) -c 'import tomllib; \
	  print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["kfp"]))')
	$(KFP_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $@

$(AZURITE_STAMP):
	npm install --prefix $(NPM_PREFIX) --save-exact --no-audit --no-fund azurite@$(AZURITE_VERSION)
	@touch $@

# After Azurite's: two npm installs into one prefix must not run at once (make -j).
$(CRD_MODELS_STAMP): | $(AZURITE_STAMP)
	npm install --prefix $(NPM_PREFIX) --save-exact --no-audit --no-fund \
	  @kubernetes-models/prometheus-operator@$(PROM_MODELS_VERSION) typescript@$(TYPESCRIPT_VERSION)
	@touch $@

demo: setup
	$(VENV)/bin/spotguard demo

lint: setup
	$(VENV)/bin/ruff check daemon tests bench examples dashboards deploy
	$(VENV)/bin/ruff format --check daemon tests bench examples dashboards deploy

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest

clean:
	rm -rf $(VENV)
