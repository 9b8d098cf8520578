"""Packaging for operators: the compose file and the Dockerfile, checked without a Docker engine.

The compose file is validated by compose-go's own validator (the reference implementation of
the Compose Specification, used by `docker compose`), built once from the Go module proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from escalator_dev.kafka_local import cache_root
from tests.conftest import repo_root

COMPOSE_GO = "github.com/compose-spec/compose-go/v2/cmd"
COMPOSE_GO_VERSION = "v2.16.2"


@pytest.fixture(scope="module")
def compose_validator() -> Path:
    """compose-go's `cmd` validator, installed once into the cache."""
    bindir = cache_root() / "bin" / f"compose-go-{COMPOSE_GO_VERSION}"
    binary = bindir / "cmd"
    if not binary.exists():
        go = shutil.which("go")
        assert go, "Go is needed to build the Compose Specification validator"
        env = {**os.environ, "GOBIN": str(bindir), "GOFLAGS": "-mod=mod"}
        env.setdefault("GOPATH", str(cache_root() / "gopath"))
        proc = subprocess.run(
            [go, "install", f"{COMPOSE_GO}@{COMPOSE_GO_VERSION}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    return binary


def validate(binary: Path, compose: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "KAFKA_"))}
    return subprocess.run(
        [str(binary), "--format", "json", str(compose)],
        cwd=compose.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(700)
def test_compose_file_conforms_to_the_compose_specification(compose_validator: Path) -> None:
    """deploy/compose.yaml loads under compose-go with both tiers as separate services."""
    proc = validate(compose_validator, repo_root() / "deploy" / "compose.yaml")
    assert proc.returncode == 0, proc.stderr
    model = json.loads(proc.stdout)
    services = model["services"]
    assert {"kafka", "topics", "sim", "cheap", "strong", "prometheus"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["cheap"]["command"] == ["run", "--tier", "cheap"]
    assert services["strong"]["command"] == ["run", "--tier", "strong"]
    assert services["cheap"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


@pytest.mark.timeout(700)
def test_the_validator_rejects_a_broken_file(compose_validator: Path, tmp_path: Path) -> None:
    """The check can fail: an unknown service key is refused."""
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  cheap:\n    image: x\n    replicaz: 2\n")
    proc = validate(compose_validator, broken)
    assert proc.returncode != 0
    assert "replicaz" in proc.stderr


def test_dockerfile_is_multistage_nonroot_with_healthcheck() -> None:
    """The image builds in one stage, runs in a slim one as a non-root user, with a HEALTHCHECK.
    (tests/image builds and runs it.)"""
    text = (repo_root() / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    # Every stage on one base: python:3.11-slim unless the build names a stand-in.
    assert "\nARG BASE_IMAGE=python:3.11-slim\n" in text
    assert all(s.startswith("FROM ${BASE_IMAGE}") for s in stages)
    # build, the emulator (development tools), and last (the default target) the service.
    assert [s.split(" AS ")[-1] for s in stages[:-1]] == ["build", "emulator"]
    assert " AS " not in stages[-1]
    service_stage = text.rpartition(stages[-1])[2]
    assert "escalator_dev" not in service_stage and "/wheels" not in service_stage
    assert "USER 10001:10001" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["escalator"]' in text
    assert "[dev]" not in text  # runtime dependencies only


def test_the_runtime_wheel_carries_no_development_tools(tmp_path: Path) -> None:
    """`pip wheel .` builds the runtime only: no emulator, no Maven pom, no dataset code."""
    import sys
    import zipfile

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(repo_root()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("escalator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "escalator/engine/worker.py" in names  # the check reads the right thing
    assert "escalator/contract/schemas/request.v1.json" in names
    assert "escalator/model/data/moderation_task.json" in names
    banned = ("escalator_dev/", "pom.xml", "log4j2", "emulator", "sim.py", "datasets", "demo")
    assert [n for n in names if any(b in n for b in banned)] == []
