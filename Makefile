# skiprec developer entry points.
#
#   make demo           virtualenv + install + synthetic data + small model + bundle + serve
#   make test           the whole default test suite
#   make lint           ruff check + ruff format --check
#   make compose-smoke  build the images, run the compose stack, check it end to end
#   make demo-clean     forget the demo data, run and bundle (the next `make demo` retrains)
#
# Variables: PORT (8000), HOST (127.0.0.1), PYTHON (first python3.x >= 3.11 found),
# TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu for the CPU-only wheel),
# SKIPREC_DATA (train on this file instead of synthetic sessions), SKIPREC_DATA_FORMAT.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PORT ?= 8000
HOST ?= 127.0.0.1
DEMO_DIR ?= var/demo
BUNDLE ?= $(DEMO_DIR)/bundle
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=

# The newest python3.x >= 3.11 on PATH, unless PYTHON is given.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { command -v $$p; break; }; done)

BIN := $(VENV)/bin
STAMP := $(VENV)/.skiprec-installed

# Prints a real track id of the bundle, for the curl example.
export FIRST_TRACK := import sys; from pathlib import Path; from skiprec.vocab import Vocabulary; \
	print(Vocabulary.load(Path(sys.argv[1]) / "vocab.json").track_id(3))

.PHONY: help install demo demo-bundle demo-clean test lint compose-smoke

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then echo "make: need python3 >= 3.11 on PATH (or PYTHON=...)" >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first and pinned: an unpinned resolve through the extras would pull the CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install -e '.[serve,train,dev]'
	touch $@

install: $(STAMP)

demo-bundle: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/demo.sh $(BUNDLE) $(DEMO_DIR)/work

demo: demo-bundle
	@track=$$($(BIN)/python -c "$$FIRST_TRACK" $(BUNDLE)); \
	url=http://$(HOST):$(PORT); \
	echo; \
	echo "skiprec demo:  $$url/    (OpenAPI: $$url/docs)"; \
	echo "try:"; \
	echo "  curl -s -X POST $$url/events -H 'Content-Type: application/json' \\"; \
	echo "       -d '{\"user_id\": \"alice\", \"track_id\": \"$$track\", \"type\": \"skip\"}'"; \
	echo "  curl -s '$$url/recommendations/alice?k=5'"; \
	echo "Ctrl-C stops the server (and its embedded Redis)."; \
	echo
	$(BIN)/skiprec serve --bundle $(BUNDLE) --data-dir $(DEMO_DIR)/redis --host $(HOST) --port $(PORT)

demo-clean:
	rm -rf $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

compose-smoke:
	scripts/compose_smoke.sh
