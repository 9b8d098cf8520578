# One place for every developer and CI command. `make check` is lint + types + unit tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest

.PHONY: help venv tools apt-packages lint types audit unit check integration deploy-check reliability-ci reliability calibration-stats test demo bench profile lock clean

help:
	@echo "make demo | test | check | bench | profile | lock"

$(STAMP): pyproject.toml service/dev/pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev,plot,otel,tier0]' -e service/dev
	touch $@

venv: $(STAMP)

# Tools for the deployment checks, pinned, in .tools/ (git-ignored):
# kustomize (Go module proxy), the KEDA and Prometheus Operator CRDs (from their Go modules),
# the AsyncAPI parser (npm), and promtool + prometheus (Debian's `prometheus` package);
# also Debian's chromium, for the browser tests; Jaeger (Go module proxy), for the tracing tests;
# and Debian's buildah and debootstrap, for `make image`.
TOOLS := $(CURDIR)/.tools
KUSTOMIZE_VERSION := v5.7.1
KEDA_VERSION := v2.17.0
PROMETHEUS_OPERATOR_VERSION := v0.85.0
ASYNCAPI_PARSER_VERSION := 3.6.6
JAEGER_VERSION := v1.75.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(TOOLS)/bin/kustomize:
	GOBIN=$(TOOLS)/bin go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(TOOLS)/crds/.done:
	mkdir -p $(TOOLS)/crds
	keda=$$(go mod download -json github.com/kedacore/keda/v2@$(KEDA_VERSION) | $(PY) -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
	  && cp $$keda/config/crd/bases/keda.sh_scaledobjects.yaml $$keda/config/crd/bases/keda.sh_triggerauthentications.yaml $(TOOLS)/crds/
	promop=$$(go mod download -json github.com/prometheus-operator/prometheus-operator@$(PROMETHEUS_OPERATOR_VERSION) | $(PY) -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
	  && cp $$promop/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml $(TOOLS)/crds/
	chmod u+w $(TOOLS)/crds/*.yaml
	touch $@

# Jaeger's all-in-one (`cmd/jaeger`: Jaeger v2, an OpenTelemetry Collector build) with in-memory
# storage. Its go.mod has a replace directive, which `go install pkg@version` refuses, so it is
# built inside its own module, as its release is. No UI: README, "Development".
$(TOOLS)/bin/jaeger:
	mkdir -p $(TOOLS)/bin
	jaeger=$$(go mod download -json github.com/jaegertracing/jaeger@$(JAEGER_VERSION) | $(PY) -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
	  && cd $$jaeger && GOFLAGS=-mod=readonly go build -trimpath -o $@.tmp \
	    -ldflags '-X github.com/jaegertracing/jaeger/internal/version.latestVersion=$(JAEGER_VERSION)' ./cmd/jaeger
	mv $@.tmp $@

$(TOOLS)/node_modules/@asyncapi/parser/package.json:
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error @asyncapi/parser@$(ASYNCAPI_PARSER_VERSION)

# Debian packages, one apt call for those missing: prometheus (promtool) for the deployment
# checks, chromium for the review console's browser tests (driven by Playwright, which never
# downloads a browser of its own), buildah and debootstrap for `make image`.
# --no-install-recommends, or apt pulls in node-exporter and its timers; Chromium's fonts come
# with its fontconfig dependency; buildah's chroot isolation needs no OCI runtime.
APT_PACKAGES = $(if $(wildcard /usr/bin/promtool),,prometheus) $(if $(wildcard /usr/bin/chromium),,chromium) \
	$(if $(wildcard /usr/bin/buildah),,buildah) $(if $(wildcard /usr/sbin/debootstrap),,debootstrap)

apt-packages:
	@if [ -n "$(strip $(APT_PACKAGES))" ]; then \
	  $(SUDO) apt-get update -q \
	  && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(strip $(APT_PACKAGES)); \
	fi

tools: $(TOOLS)/bin/kustomize $(TOOLS)/crds/.done $(TOOLS)/node_modules/@asyncapi/parser/package.json $(TOOLS)/bin/jaeger apt-packages

lint: $(STAMP)
	$(BIN)/ruff format --check service tests
	$(BIN)/ruff check service tests

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(PYTEST) tests/unit -q

# Known vulnerabilities in every pinned package: pip-audit (each release's advisories), and
# PyPI's latest-release advisories for what it could not reach. Its last line says how many
# packages were audited and by what, "NOTHING audited" when no source answered
# (service/dev/escalator_dev/audit.py).
audit: $(STAMP)
	$(BIN)/python -m escalator_dev.audit requirements.lock

check: lint types audit unit

integration: $(STAMP) tools
	PATH=$(TOOLS)/bin:$$PATH $(PYTEST) tests/integration -q

# Kubernetes manifests, Prometheus rules (promtool), dashboard queries, AsyncAPI document.
deploy-check: $(STAMP) tools
	PATH=$(TOOLS)/bin:$$PATH ESCALATOR_TOOLS=$(TOOLS) $(PYTEST) tests/deploy -q

# Fault scenarios at the reduced CI scale.
reliability-ci: $(STAMP)
	$(PYTEST) tests/reliability -q

# Fault scenarios at full scale; one JSON row per scenario in reliability-report.jsonl.
reliability: $(STAMP)
	ESCALATOR_RELIABILITY_SCALE=full ESCALATOR_RELIABILITY_REPORT=reliability-report.jsonl \
		$(PYTEST) tests/reliability -q -s

# The calibration guarantee at full scale: 200 repetitions per world x n x p (about 3 min).
calibration-stats: $(STAMP)
	ESCALATOR_CALIBRATION_SCALE=full $(PYTEST) -q -s tests/unit/calibration/test_search.py \
		tests/unit/calibration/test_monitor.py tests/unit/calibration/test_dataset.py

# The service image and the emulator image, built from the Dockerfile with buildah (no Docker
# engine; as root), on python:3.11-slim or, when no registry gives it, on a stand-in made from
# Debian bookworm's packages (deploy/image/). Prints the build time and the sizes.
IMAGE := localhost/escalator:local
EMULATOR_IMAGE := localhost/escalator-emulator:local
.PHONY: image image-test
image: apt-packages
	deploy/image/build.sh $(IMAGE) $(EMULATOR_IMAGE)

# The built image, from outside (its config, its files) and inside (buildah run): non-root, no
# development tools, `--help`, `doctor`, and `run --tier all` against the test broker and the
# emulator, with its HEALTHCHECK; consistent with compose.yaml and the Kubernetes manifests.
image-test: $(STAMP) image
	ESCALATOR_IMAGE=$(IMAGE) ESCALATOR_EMULATOR_IMAGE=$(EMULATOR_IMAGE) $(PYTEST) tests/image -q

# The whole suite: static checks, unit tests, integration tests against a real broker, the
# reduced reliability scenarios, and the image, built and run.
test: check deploy-check integration reliability-ci image-test

demo: $(STAMP)
	$(BIN)/escalator demo

# B1q's peer, Quix Streams, in a virtualenv of its own: a benchmark-only dependency.
QUIX := .bench/quix
$(QUIX)/.installed: tests/benchmarks/quix-requirements.txt
	$(PY) -m venv $(QUIX)
	$(QUIX)/bin/pip install -q --upgrade pip
	$(QUIX)/bin/pip install -q -r tests/benchmarks/quix-requirements.txt
	touch $@

bench: $(STAMP) $(QUIX)/.installed
	ESCALATOR_QUIX_PYTHON=$(QUIX)/bin/python $(BIN)/python -m tests.benchmarks.run

# B1p: where a cheap-tier record's CPU goes, sampled by py-spy, which lives in a virtualenv of
# its own (a binary; benchmark-only). Attaching needs ptrace (root, or CAP_SYS_PTRACE).
PYSPY := .bench/pyspy
$(PYSPY)/.installed: tests/benchmarks/pyspy-requirements.txt
	$(PY) -m venv $(PYSPY)
	$(PYSPY)/bin/pip install -q -r tests/benchmarks/pyspy-requirements.txt
	touch $@

profile: $(STAMP) $(PYSPY)/.installed
	ESCALATOR_PYSPY=$(PYSPY)/bin/py-spy $(BIN)/python -m tests.benchmarks.run b1p

# Re-pin every Python package to what is installed in the venv now.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -vi '^escalator' > requirements.lock

clean:
	rm -rf $(VENV) .bench .pytest_cache .mypy_cache .ruff_cache
