"""The Kubernetes manifests: they build with kustomize, every built-in object validates
against the Kubernetes schemas (kubernetes-validate, offline), the KEDA and Prometheus
Operator resources against their own CRDs' schemas, the Strimzi topics structurally, and the
settings that must agree with each other do. Each kustomization is built as it is and with the
batch-lane component opted into, as an operator would (``+batch-lane``)."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import orjson
import pytest
import yaml

from escalator.config import Settings, load_settings
from escalator.model.task import load_task, parse_task
from tests.deploy.tools import ROOT, crd_file, tool

K8S_VERSION = "1.33.0"
KUSTOMIZATIONS = ["deploy/k8s/base", "deploy/k8s/overlays/example"]
# The batch lane's component: each kustomization above built with it too (see ``source``).
LANE = "+batch-lane"
WITH_LANE = [path + LANE for path in KUSTOMIZATIONS]
EVERY = KUSTOMIZATIONS + WITH_LANE
# What an operator uncomments in the example overlay to turn the lane on.
LANE_OPT_IN = "# components:\n#   - ../../components/batch-lane\n"
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
}
# Strimzi publishes its CRDs in no registry this machine reaches: the fields Escalator uses,
# as Strimzi's documentation describes them (kafka.strimzi.io/v1beta2 KafkaTopic).
STRIMZI_TOPIC = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "metadata": {
            "type": "object",
            "required": ["name", "labels"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                "labels": {"type": "object", "required": ["strimzi.io/cluster"]},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["partitions", "replicas"],
            "properties": {
                "topicName": {"type": "string"},
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": {"type": "object"},
            },
        },
    },
}


@cache
def _lane_tree() -> Path:
    """A copy of deploy/k8s where the base is opted into the batch-lane component by an overlay
    of its own, and the example overlay by uncommenting its ``components:`` lines."""
    tree = Path(tempfile.mkdtemp(prefix="escalator-k8s-")) / "k8s"
    atexit.register(shutil.rmtree, tree.parent, True)
    shutil.copytree(ROOT / "deploy/k8s", tree)
    (tree / "overlays/base-lane").mkdir()
    (tree / "overlays/base-lane/kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n  - ../../base\ncomponents:\n  - ../../components/batch-lane\n"
    )
    example = tree / "overlays/example/kustomization.yaml"
    text = example.read_text()
    assert text.count(LANE_OPT_IN) == 1, "the example overlay no longer shows how to opt in"
    example.write_text(text.replace(LANE_OPT_IN, LANE_OPT_IN.replace("# ", "").replace("#", "")))
    return tree


def source(path: str) -> Path:
    """The directory kustomize builds for ``path`` (one of :data:`EVERY`)."""
    if not path.endswith(LANE):
        return ROOT / path
    path = path.removesuffix(LANE)
    if path == "deploy/k8s/base":
        return _lane_tree() / "overlays/base-lane"
    return _lane_tree() / Path(path).relative_to("deploy/k8s")


@cache
def build(path: str) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run(
        [tool("kustomize"), "build", str(source(path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def objects(path: str, kind: str | None = None) -> Iterator[dict[str, Any]]:
    for obj in build(path):
        if kind is None or obj["kind"] == kind:
            yield obj


def named(path: str, kind: str, name: str) -> dict[str, Any]:
    for obj in objects(path, kind):
        if obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} in {path}")


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    crd = yaml.safe_load(crd_file(CRDS[(api_version, kind)]).read_text())
    version = api_version.split("/")[1]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema: dict[str, Any] = v["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"{kind}: the CRD has no version {version}")


@pytest.mark.parametrize("path", EVERY)
def test_builds_with_every_expected_object(path: str) -> None:
    kinds = sorted(o["kind"] for o in objects(path))
    for kind, count in {
        "Deployment": 4 if path.endswith(LANE) else 3,
        "PodDisruptionBudget": 2,
        "ScaledObject": 2,
        "Service": 2,
        "ServiceMonitor": 1,
        "KafkaTopic": 11,
        "ConfigMap": 2,
    }.items():
        assert kinds.count(kind) == count, (kind, kinds)


@pytest.mark.parametrize("path", EVERY)
def test_builtin_objects_match_the_kubernetes_schemas(path: str) -> None:
    checked = 0
    for obj in objects(path):
        if "/" in obj["apiVersion"] and obj["apiVersion"].split("/")[0].endswith(
            (".sh", ".coreos.com", ".strimzi.io")
        ):
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {exc}") from exc
        checked += 1
    assert checked >= 9


@pytest.mark.parametrize("path", EVERY)
def test_custom_resources_match_their_crds(path: str) -> None:
    checked = 0
    for obj in objects(path):
        key = (obj["apiVersion"], obj["kind"])
        if key in CRDS:
            jsonschema.validate(obj, crd_schema(*key))
        elif obj["kind"] == "KafkaTopic":
            jsonschema.validate(obj, STRIMZI_TOPIC)
        else:
            continue
        checked += 1
    assert checked >= 8


def test_crd_validation_can_fail() -> None:
    """The CRD schemas are strict enough to catch a typo in a ScaledObject."""
    bad = named("deploy/k8s/base", "ScaledObject", "escalator-cheap")
    bad = orjson.loads(orjson.dumps(bad))
    bad["spec"]["maxReplicaCount"] = "six"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("keda.sh/v1alpha1", "ScaledObject"))


def _env(container: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    env = dict(config)
    env.update({e["name"]: e.get("value", "<ref>") for e in container.get("env", [])})
    return env


def _pod_settings(
    path: str, container: dict[str, Any], tmp_path: Path, role: str = "cheap"
) -> tuple[dict[str, str], Settings]:
    """The pod's environment, and the settings the service makes of it. Files the pod mounts
    are stood in for by local copies (the task) or empty files (the CA, the passwords)."""
    config_name = container["envFrom"][0]["configMapRef"]["name"]
    config = next(
        c["data"] for c in objects(path, "ConfigMap") if c["metadata"]["name"] == config_name
    )
    env = _env(container, config)
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    local = dict(env)
    for name, value in env.items():
        if value.startswith("/etc/escalator/"):
            assert any(value.startswith(m + "/") for m in mounted), (name, value)
            stand_in = tmp_path / name
            stand_in.write_text(task_json(path) if name == "ESCALATOR_TASK_FILE" else "")
            local[name] = str(stand_in)
    return env, load_settings({**local, "ANTHROPIC_API_KEY": "sk-placeholder"}, role=role)


@pytest.mark.parametrize("path", EVERY)
@pytest.mark.parametrize(
    ("tier", "topic_var", "group"),
    [
        ("cheap", "ESCALATOR_REQUESTS_TOPIC", "escalator-cheap"),
        ("strong", "ESCALATOR_ESCALATIONS_TOPIC", "escalator-strong"),
    ],
)
def test_each_tier_is_configured_consistently(
    path: str, tier: str, topic_var: str, group: str, tmp_path: Path
) -> None:
    deployment = named(path, "Deployment", f"escalator-{tier}")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The configuration the pod gets is one the service accepts at start-up.
    env, settings = _pod_settings(path, container, tmp_path)
    assert container["args"] == ["run", "--tier", tier]
    assert settings.pipeline.shutdown_grace_s < pod["terminationGracePeriodSeconds"]

    # The API key comes from a Secret, never from a literal.
    (key,) = [e for e in container["env"] if e["name"] == "ANTHROPIC_API_KEY"]
    assert "secretKeyRef" in key["valueFrom"]

    # Non-root, read-only root filesystem, no privilege escalation, resources set.
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(container["resources"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert port == settings.metrics_port

    # KEDA scales this Deployment on this tier's group and input topic, never past the
    # topic's partition count, with a lag target above the in-flight limit (see the
    # comment in scaledobjects.yaml: committed offsets trail the work by about that much).
    scaled = named(path, "ScaledObject", f"escalator-{tier}")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["consumerGroup"] == group
    assert trigger["topic"] == env[topic_var]
    assert trigger["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = named(path, "KafkaTopic", env[topic_var])
    assert scaled["spec"]["maxReplicaCount"] <= topic["spec"]["partitions"]
    assert int(trigger["lagThreshold"]) > 2 * int(env["ESCALATOR_MAX_IN_FLIGHT"])

    # A PodDisruptionBudget selects exactly this tier's pods.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = named(path, "PodDisruptionBudget", f"escalator-{tier}")
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    other = named(path, "Deployment", f"escalator-{'strong' if tier == 'cheap' else 'cheap'}")
    assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()

    # The metrics Service selects this tier's pods, and the ServiceMonitor selects the Service.
    service = named(path, "Service", "escalator-metrics")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = next(iter(objects(path, "ServiceMonitor")))
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_every_topic_is_a_kafka_topic_configured_as_topics_create_does() -> None:
    """The ConfigMap names every topic the service reads or writes (the lane's and tier 0's
    too: turning either on must not leave a tier waiting with ``topics_missing``), each is a
    KafkaTopic, and each carries the configuration ``escalator topics create`` sets."""
    from escalator.cli.service import topic_configs

    data = next(c for c in objects("deploy/k8s/base", "ConfigMap") if "task.json" not in c["data"])[
        "data"
    ]
    kafka_topics = {o["metadata"]["name"]: o for o in objects("deploy/k8s/base", "KafkaTopic")}
    wanted = {v for k, v in data.items() if k.endswith("_TOPIC")}
    assert wanted == set(kafka_topics)
    # The pods' settings, the task file aside (mounted in the pod, not here).
    settings = load_settings({k: v for k, v in data.items() if k != "ESCALATOR_TASK_FILE"})
    assert set(settings.topics.all()) == wanted
    configs = topic_configs(settings)
    assert configs, "nothing to compare"
    for name, config in configs.items():
        given = {k: str(v) for k, v in kafka_topics[name]["spec"]["config"].items()}
        assert config.items() <= given.items(), (name, config, given)


def task_json(path: str) -> str:
    task_map = next(c for c in objects(path, "ConfigMap") if "task.json" in c.get("data", {}))
    text: str = task_map["data"]["task.json"]
    return text


def test_the_task_in_the_config_map_is_a_valid_task() -> None:
    task = parse_task(task_json("deploy/k8s/base").encode(), "deploy task.json")
    assert task.labels == load_task(None).labels


@pytest.mark.parametrize("path", EVERY)
def test_the_review_console_is_configured_consistently(path: str, tmp_path: Path) -> None:
    """One console replica (leases live in its memory), never two during a rollout; the page
    on every interface behind its Service, Secure cookies, passwords from a Secret mounted
    read-only; probes and metrics on the metrics port, scraped like the tiers."""
    deployment = named(path, "Deployment", "escalator-review")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env, settings = _pod_settings(path, container, tmp_path)
    assert container["args"] == ["review", "serve"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in objects(path, "ScaledObject")}
    assert deployment["metadata"]["name"] not in scaled, "no autoscaling: leases are in memory"
    rv = settings.review
    assert rv.host == "0.0.0.0" and rv.secure_cookies is True
    assert rv.passwords_file is not None and rv.tokens_file is None
    assert settings.pipeline.shutdown_grace_s < pod["terminationGracePeriodSeconds"]
    assert "ANTHROPIC_API_KEY" not in env, "the console calls no model"

    # The credentials file comes from a Secret, mounted read-only.
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    (mount,) = [
        m
        for m in container["volumeMounts"]
        if env["ESCALATOR_REVIEW_PASSWORDS_FILE"].startswith(m["mountPath"] + "/")
    ]
    assert mount["name"] in secret_volumes and mount["readOnly"] is True

    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(container["resources"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port and ports["http"] == rv.port
    for probe, where in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": where, "port": "metrics"}

    # Its Service selects the console's pods and no tier's, on the page's port; the metrics
    # Service (and so the ServiceMonitor) selects the console too.
    pod_labels = spec["template"]["metadata"]["labels"]
    service = named(path, "Service", "escalator-review")
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    for tier in ("cheap", "strong"):
        other = named(path, "Deployment", f"escalator-{tier}")
        assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    metrics = named(path, "Service", "escalator-metrics")
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    monitor = next(iter(objects(path, "ServiceMonitor")))
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    ), "the ServiceMonitor scrapes the metrics Service, not the page"


def _runs(deployment: dict[str, Any]) -> list[str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


@pytest.mark.parametrize("path", EVERY)
def test_the_lane_runs_only_where_the_component_is(path: str, tmp_path: Path) -> None:
    """Without the component no lane worker runs (``run --tier lane`` would refuse to start
    with the lane off), and every worker that reads the config has the lane off; with it, one
    lane worker runs and every tier has the lane on: the cheap tier and the lane worker must
    agree (docs/OPERATIONS.md, "The batch lane")."""
    on = path.endswith(LANE)
    workers = [d for d in objects(path, "Deployment") if _runs(d)[0] == "run"]
    lanes = [d for d in workers if _runs(d) == ["run", "--tier", "lane"]]
    assert [d["metadata"]["name"] for d in lanes] == (["escalator-lane"] if on else [])
    assert len(workers) == (3 if on else 2)
    for deployment in workers:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        _, settings = _pod_settings(path, container, tmp_path, role=_runs(deployment)[2])
        assert settings.lane.enabled is on, deployment["metadata"]["name"]


@pytest.mark.parametrize("path", WITH_LANE)
def test_the_lane_worker_is_configured_consistently(path: str, tmp_path: Path) -> None:
    """The lane worker starts (its settings and files pass `run --tier lane`'s checks), shares
    the tiers' image, config, Secret, mounts and hardening, probes and exposes its own metrics
    port, runs one replica replaced with Recreate and not autoscaled (see the comment in its
    manifest), is scraped through the metrics Service, and neither selects nor is selected by
    another workload's Deployment or PodDisruptionBudget."""
    from escalator.app import load_parts
    from escalator.tiers.table import tier_table, tiers_to_run, topics_needed

    deployment = named(path, "Deployment", "escalator-lane")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    _, settings = _pod_settings(path, container, tmp_path, role="lane")
    assert container["args"] == ["run", "--tier", "lane"]
    assert tiers_to_run("lane", settings) == ["lane"]
    load_parts(settings, ["lane"])
    assert settings.pipeline.shutdown_grace_s < pod["terminationGracePeriodSeconds"]
    # Every topic it reads or writes is a KafkaTopic of this build (no `topics_missing`).
    kafka_topics = {o["metadata"]["name"]: o for o in objects(path, "KafkaTopic")}
    assert set(topics_needed(settings, [tier_table(settings)["lane"]])) <= set(kafka_topics)

    # What the tiers have, the lane worker has: the image, the config, the API key's Secret,
    # every variable but the tier's in-flight limit (the lane's is its own), the mounts, the
    # security context.
    cheap = named(path, "Deployment", "escalator-cheap")["spec"]["template"]["spec"]
    (tier,) = cheap["containers"]
    for key in ("image", "imagePullPolicy", "envFrom", "volumeMounts", "securityContext"):
        assert container[key] == tier[key], key
    for key in ("volumes", "securityContext", "automountServiceAccountToken"):
        assert pod[key] == cheap[key], key
    lane_env = {e["name"]: e for e in container["env"]}
    for entry in tier["env"]:
        if entry["name"] != "ESCALATOR_MAX_IN_FLIGHT":
            assert lane_env.get(entry["name"]) == entry, entry["name"]
    assert "secretKeyRef" in lane_env["ANTHROPIC_API_KEY"]["valueFrom"]
    assert {"requests", "limits"} <= set(container["resources"])

    # Its own port, the one the process listens on, probed there.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.metrics_port}
    for probe, where in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        assert container[probe]["httpGet"] == {"path": where, "port": "metrics"}, probe

    # One replica, never two during a rollout, no KEDA.
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in objects(path, "ScaledObject")}
    assert "escalator-lane" not in scaled
    assert spec["replicas"] <= kafka_topics[settings.topics.handoff]["spec"]["partitions"]

    # Its pods are its Deployment's alone, and no budget of a tier counts them.
    labels = spec["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "escalator"
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    for other in objects(path, "Deployment"):
        if other is deployment:
            continue
        other_labels = other["spec"]["template"]["metadata"]["labels"]
        assert not spec["selector"]["matchLabels"].items() <= other_labels.items()
        assert not other["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for pdb in objects(path, "PodDisruptionBudget"):
        assert not pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # Scraped like the tiers: the metrics Service selects it, on its named metrics port.
    service = named(path, "Service", "escalator-metrics")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
