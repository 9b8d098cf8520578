"""deploy/compose.yaml and the Kubernetes manifests run the images as built: the entrypoint they
rely on, commands the image has, its user, its metrics port and its health endpoint."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.conftest import repo_root
from tests.image.buildah import EMULATOR_IMAGE, Container, entrypoint

pytestmark = pytest.mark.integration

DEPLOY = repo_root() / "deploy"


def _metrics_port(config: dict[str, Any]) -> int:
    env = dict(e.split("=", 1) for e in config["Env"])
    port = int(env["ESCALATOR_METRICS_PORT"])
    assert set(config["ExposedPorts"]) == {f"{port}/tcp"}
    return port


def _health_path(config: dict[str, Any]) -> str:
    """The path the HEALTHCHECK asks for, on the port ESCALATOR_METRICS_PORT names."""
    test = " ".join(config["Healthcheck"]["Test"])
    assert "ESCALATOR_METRICS_PORT" in test
    match = re.search(r"http://127\.0\.0\.1:%s(/\w+)", test)
    assert match, test
    return match.group(1)


def _deployments() -> list[dict[str, Any]]:
    """The base's Deployments and the components' (the batch lane's)."""
    found = []
    k8s = DEPLOY / "k8s"
    for path in sorted([*(k8s / "base").glob("*.yaml"), *(k8s / "components").glob("*/*.yaml")]):
        found += [
            d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"
        ]
    return found


def test_kubernetes_runs_the_image_as_built(
    config: dict[str, Any], image_commands: set[str]
) -> None:
    """Every Deployment keeps the image's entrypoint (args only) with a command the image has,
    runs as the image's user, and probes the HEALTHCHECK's path on the image's metrics port."""
    uid, _, gid = config["User"].partition(":")
    port = _metrics_port(config)
    path = _health_path(config)
    deployments = _deployments()
    assert {d["metadata"]["name"] for d in deployments} == {
        "escalator-cheap",
        "escalator-strong",
        "escalator-review",
        "escalator-lane",
    }
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        name = deployment["metadata"]["name"]
        assert container["image"].split(":")[0] == "escalator", name
        assert "command" not in container, f"{name} replaces the entrypoint"
        assert container["args"][0] in image_commands, name
        security = pod["securityContext"]
        assert (str(security["runAsUser"]), str(security["runAsGroup"])) == (uid, gid), name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == port, name
        assert container["livenessProbe"]["httpGet"] == {"path": path, "port": "metrics"}, name
        assert container["startupProbe"]["httpGet"] == {"path": path, "port": "metrics"}, name


def test_compose_runs_the_images_as_built(
    config: dict[str, Any], emulator_config: dict[str, Any], image_commands: set[str]
) -> None:
    """compose builds the service image (default target) and the emulator target, gives each
    service a command its image has without replacing the entrypoint, user or HEALTHCHECK, and
    Prometheus scrapes the image's metrics port."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    port = _metrics_port(config)
    assert services["topics"]["build"] == ".." and services["topics"]["image"] == "escalator:local"
    for name in ("topics", "cheap", "strong"):
        service = services[name]
        assert service["image"] == "escalator:local", name
        assert service["command"][0] in image_commands, name
        assert not {"entrypoint", "user", "healthcheck"} & set(service), name
    assert services["cheap"]["environment"]["ESCALATOR_METRICS_PORT"] == str(port)
    sim = services["sim"]
    assert sim["build"]["target"] == "emulator" and sim["image"] == "escalator-emulator:local"
    assert sim["command"] == emulator_config["Cmd"]
    assert emulator_config["Entrypoint"] == config["Entrypoint"]
    assert emulator_config["User"] == config["User"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for job in scrape["scrape_configs"]:
        assert job["dns_sd_configs"][0]["port"] == port, job["job_name"]


def test_the_emulator_image_has_the_development_commands(
    emulator_config: dict[str, Any],
) -> None:
    """The emulator target (compose's `sim`) carries `escalator sim`, which the service image
    does not; its default command is the emulator on every interface."""
    container = Container.from_image(EMULATOR_IMAGE)
    try:
        done = container.run(*entrypoint(emulator_config, "sim", "--help"))
    finally:
        container.remove()
    assert done.returncode == 0, done.stderr
    assert "--port" in done.stdout
    assert emulator_config["Cmd"][:3] == ["sim", "--host", "0.0.0.0"]
