# One place for every developer and CI command. `make check` is lint + types + unit tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest

.PHONY: help venv lint types audit unit check integration reliability-ci reliability test demo bench lock clean

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

# Known vulnerabilities in every pinned package (PyPI's advisory data, via pip-audit).
audit: $(STAMP)
	$(BIN)/pip-audit -r requirements.lock --progress-spinner off

check: lint types audit unit

integration: $(STAMP)
	$(PYTEST) tests/integration -q

# Fault scenarios at the reduced CI scale.
reliability-ci: $(STAMP)
	$(PYTEST) tests/reliability -q

# Fault scenarios at full scale; one JSON row per scenario in reliability-report.jsonl.
reliability: $(STAMP)
	ESCALATOR_RELIABILITY_SCALE=full ESCALATOR_RELIABILITY_REPORT=reliability-report.jsonl \
		$(PYTEST) tests/reliability -q -s

# The whole suite: static checks, unit tests, integration tests against a real broker, and
# the reduced reliability scenarios.
test: check integration reliability-ci

demo: $(STAMP)
	$(BIN)/escalator demo

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.run

# Re-pin every Python package to what is installed in the venv now.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -vi '^escalator' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
