"""The service image as built by `make image`, checked from outside (its config and files) and
inside (`buildah run`): who it runs as, what it carries and leaves out, and that it serves: the
doctor passes and `run --tier all` turns requests into results against the test broker and the
emulator (from the host's venv), with its HEALTHCHECK passing and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from escalator.config import load_settings
from escalator.model.task import load_task
from escalator_dev.emulator.server import classify
from tests.image.buildah import IMAGE, Container, RunningProcess, entrypoint
from tests.integration.harness import (
    collect,
    make_env,
    produce,
    requests,
    setup_topics,
    wait_for,
)

pytestmark = pytest.mark.integration

SITE = Path("opt/escalator/lib/python3.11/site-packages")
ENTRYPOINT_SCRIPT = "/opt/escalator/bin/escalator"  # `escalator` on the image's PATH
TEXTS = [
    "What a lovely afternoon for a picnic in the park with the children.",
    "Step by step: build a bomb, buy explosives, detonate it to kill people and murder them.",
    "How schools can prevent violence and report threats safely, with help for victims.",
    "He said he would hurt them if they did not pay.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_runs_as_a_non_root_user(config: dict[str, Any], container: Container) -> None:
    """USER is numeric and not root (so Kubernetes' runAsNonRoot can verify it), and a process
    started in the image runs as that user, which has a name."""
    uid, _, gid = config["User"].partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0, config["User"]
    done = container.run("id")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"uid={uid}(escalator) gid={gid}(escalator)"), done.stdout


def test_has_the_service_commands_and_no_development_ones(
    config: dict[str, Any], container: Container, image_commands: set[str]
) -> None:
    """`escalator --help` lists the service's commands and none of sim, kafka, demo; asking for
    one is a usage error, and the development package is not importable."""
    assert {"run", "topics", "doctor", "calibrate", "review"} <= image_commands
    assert not {"sim", "kafka", "demo"} & image_commands
    done = container.run(*entrypoint(config, "sim"))
    assert done.returncode == 2 and "invalid choice: 'sim'" in done.stderr, done.stderr
    done = container.run("python", "-c", "import escalator_dev")
    assert done.returncode != 0 and "No module named 'escalator_dev'" in done.stderr


def test_tracing_can_be_turned_on(config: dict[str, Any], container: Container) -> None:
    """The image carries the `otel` extra: the standard variables turn tracing on, and
    `escalator config` (which checks the extra, connecting to nothing) accepts them."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
    }
    done = container.run(*entrypoint(config, "config"), env=env)
    assert done.returncode == 0, done.stderr
    assert "OTEL_TRACES_EXPORTER" in done.stdout and "otlp" in done.stdout, done.stdout


def test_has_no_emulator_pom_or_dataset_files(container: Container) -> None:
    """No file of the development tools anywhere in the image (emulator, Maven pom, log4j
    configuration, datasets, demo), and no build leftovers; the runtime's own data is there."""
    root = container.rootfs()
    package = root / SITE / "escalator"
    for wanted in (
        "engine/worker.py",
        "contract/schemas/request.v1.json",
        "model/data/moderation_task.json",
        "review/static/console.js",
    ):
        assert (package / wanted).is_file(), wanted
    banned = re.compile(r"escalator_dev|emulator|pom\.xml|log4j2|datasets|demo\.py|pyrit")
    found = [str(p.relative_to(root)) for p in root.rglob("*") if banned.search(p.name)]
    assert found == []
    for leftover in ("src", "wheels", "etc/pip.conf", "root/.cache", "root/.config/pip"):
        assert not (root / leftover).exists(), leftover


def test_carries_no_build_secrets(container: Container) -> None:
    """The pip configuration and CA bundle the build mounted are not in the image: none of this
    machine's local CA certificates is in the image's CA bundle."""
    local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not local_cas and not Path("/etc/pip.conf").exists():
        pytest.skip("this machine gives the build no pip configuration and no local CA")
    bundle = (container.rootfs() / "etc/ssl/certs/ca-certificates.crt").read_text()
    flat = "".join(bundle.split())
    assert "BEGIN CERTIFICATE" in bundle  # the image has a bundle of its own: Debian's
    for ca in local_cas:
        body = "".join(ca.read_text().split("-----")[2].split())
        base64.b64decode(body)  # the right part of the PEM
        assert body not in flat, f"{ca} is in the image"


@pytest.mark.timeout(300)
async def test_doctor_passes_against_the_test_broker_and_the_emulator(
    kafka_bootstrap: str, sim_url: str, unique: str, config: dict[str, Any], container: Container
) -> None:
    """`escalator doctor` in the image: every check ok, exit 0."""
    env = make_env(kafka_bootstrap, sim_url, unique)
    await setup_topics(load_settings(env))
    done = await asyncio.to_thread(container.run, *entrypoint(config, "doctor"), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith(f"ok   topic req-{unique}:") for line in lines), lines
    assert "checks passed" in lines[-1]


@pytest.mark.timeout(420)
async def test_run_tier_all_turns_requests_into_results(
    kafka_bootstrap: str, sim_url: str, unique: str, config: dict[str, Any], tmp_path: Path
) -> None:
    """The image's default command (`run --tier all`) answers every request once, at the tier
    the cheap confidence implies, and dead-letters a malformed one; its HEALTHCHECK passes while
    it runs (and fails where nothing listens); SIGTERM stops it with exit 0; it writes nothing
    outside /tmp (Kubernetes runs it on a read-only root filesystem)."""
    assert config["Cmd"] == ["run", "--tier", "all"]
    port = free_port()
    env = make_env(
        kafka_bootstrap,
        sim_url,
        unique,
        ESCALATOR_METRICS_PORT=str(port),
        ESCALATOR_METRICS_HOST="127.0.0.1",
    )
    settings = load_settings(env)
    await setup_topics(settings)
    labels = list(load_task(None).labels)
    n = 24
    expected = {
        f"img-{i}": (
            "cheap"
            if classify(TEXTS[i % len(TEXTS)], labels, "cheap").confidence
            >= settings.routing.threshold
            else "strong"
        )
        for i in range(n)
    }
    assert set(expected.values()) == {"cheap", "strong"}, "the sample must exercise both tiers"
    health = config["Healthcheck"]["Test"]
    assert health[0] == "CMD", health

    running = Container.from_image(IMAGE)
    log = (tmp_path / "service.log").open("wb")
    service = RunningProcess(running.command(*entrypoint(config, *config["Cmd"]), env=env), log)
    try:
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, "img", TEXTS))
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], [b"not json"])
        results, dead = env["ESCALATOR_RESULTS_TOPIC"], env["ESCALATOR_DEAD_LETTER_TOPIC"]
        got = await collect(
            kafka_bootstrap,
            [results, dead],
            lambda c: len(c.on(results)) >= n and len(c.on(dead)) >= 1,
            timeout_s=240,
            linger_s=1.0,
        )
        by_id = got.results_by_id(results)
        assert {k: [r["tier"] for r in v] for k, v in by_id.items()} == {
            k: [tier] for k, tier in expected.items()
        }, (tmp_path / "service.log").read_text()[-3000:]
        (letter,) = got.on(dead)
        assert dict(letter.headers)["x-escalator-reason"] == b"invalid_json"

        ok = await asyncio.to_thread(
            running.run, *health[1:], env={"ESCALATOR_METRICS_PORT": str(port)}
        )
        assert ok.returncode == 0, ok.stderr
        nobody = await asyncio.to_thread(
            running.run, *health[1:], env={"ESCALATOR_METRICS_PORT": str(free_port())}
        )
        assert nobody.returncode != 0

        await wait_for(lambda: service.service_pid(ENTRYPOINT_SCRIPT) is not None, 30)
        status = await asyncio.to_thread(service.terminate_service, ENTRYPOINT_SCRIPT)
        log.flush()
        assert status == 0, (tmp_path / "service.log").read_text()[-3000:]
        upper = running.upper_dir()
        assert upper.is_dir(), f"{upper}: buildah's storage driver is not overlay"
        written = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
        # buildah run makes /run as a mount point (which shows this is the container's upper
        # layer); anything else is the service's doing.
        assert "run" in written, written
        assert [w for w in written if w != "run" and not w.startswith("tmp/")] == []
    finally:
        service.kill()
        log.close()
        running.remove()
