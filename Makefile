# One place for every developer and CI command. `make check` is lint + types + unit tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest

.PHONY: help venv lint types unit check integration test demo bench lock clean

help:
	@echo "make demo | test | check | bench | lock"

$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev,plot]'
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check service tests
	$(BIN)/ruff check service tests

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(PYTEST) tests/unit -q

check: lint types unit

integration: $(STAMP)
	$(PYTEST) tests/integration -q

# The whole suite: static checks, unit tests, and integration tests against a real broker.
test: check integration

demo: $(STAMP)
	$(BIN)/escalator demo

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.run

# Re-pin every Python package to what is installed in the venv now.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -vi '^escalator' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
