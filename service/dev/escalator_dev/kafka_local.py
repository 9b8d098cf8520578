"""A real Apache Kafka (KRaft) cluster on loopback, built from Maven Central artifacts.

This module owns: fetching the broker's classpath into a cache outside the repository,
writing per-node ``server.properties``, formatting storage with ``kafka.tools.StorageTool``,
launching ``kafka.Kafka`` per node as a detached JVM, waiting until a metadata request sees
every broker, and stopping (SIGTERM) or killing (SIGKILL) nodes.

It is used by ``escalator kafka start|stop|status``, by the demo and by the test suite.
State is kept in ``<workdir>/cluster.json`` so that a later process can stop the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import orjson

from escalator.errors import ConfigError, EscalatorError

DEFAULT_KAFKA_VERSION = "4.1.1"
DEFAULT_HEAP_MB = 512
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


class KafkaLaunchError(EscalatorError):
    """The local broker could not be fetched, formatted or started."""


def cache_root() -> Path:
    """Where fetched artifacts live: ``$ESCALATOR_CACHE_DIR`` or ``~/.cache/escalator``."""
    base = os.environ.get("ESCALATOR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "escalator"
    )
    return Path(base)


def ensure_kafka_libs(version: str = DEFAULT_KAFKA_VERSION, cache: Path | None = None) -> Path:
    """Return the directory holding the broker's jars, fetching them with Maven only once.

    The fetch lands in a temporary directory that is renamed into place, so a crash mid-fetch
    never leaves a half-filled cache that later runs would trust.
    """
    root = (cache or cache_root()) / f"kafka-{version}"
    libs = root / "libs"
    marker = root / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLaunchError("Maven (mvn) is not on PATH; it is needed once to fetch Kafka")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"libs.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    pom = resources.files("escalator_dev") / "pom.xml"
    with resources.as_file(pom) as pom_path:
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom_path),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise KafkaLaunchError(f"fetching Kafka {version} with Maven failed:\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    log4j = resources.files("escalator_dev") / "log4j2.properties"
    (root / "log4j2.properties").write_bytes(log4j.read_bytes())
    marker.write_text(version)
    return libs


def port_free(port: int) -> bool:
    """True if nothing listens on loopback ``port`` (as a broker would bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Node:
    """One combined broker+controller process."""

    node_id: int
    broker_port: int
    controller_port: int
    extra_ports: dict[str, int] = field(default_factory=dict)
    pid: int | None = None


@dataclass(slots=True)
class ClusterSpec:
    """What is needed to (re)start the cluster from another process."""

    workdir: str
    version: str
    nodes: list[Node]
    heap_mb: int = DEFAULT_HEAP_MB
    cluster_id: str = ""
    extra_props: dict[str, str] = field(default_factory=dict)
    # Listener name -> security protocol, for extra listeners (e.g. SASL_SSL in security tests).
    extra_listeners: dict[str, str] = field(default_factory=dict)
    scram_users: list[str] = field(default_factory=list)


class LocalKafkaCluster:
    """A KRaft cluster of ``nodes`` combined-mode nodes on 127.0.0.1.

    ``nodes == 1`` formats with ``--standalone``; more nodes list every controller in
    ``controller.quorum.voters`` and format each node with the same cluster id and no quorum flag.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: int = 1,
        *,
        version: str = DEFAULT_KAFKA_VERSION,
        heap_mb: int = DEFAULT_HEAP_MB,
        extra_props: dict[str, str] | None = None,
        extra_listeners: dict[str, str] | None = None,
        scram_users: list[str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ConfigError("a cluster needs at least one node")
        self.spec = ClusterSpec(
            workdir=str(workdir),
            version=version,
            heap_mb=heap_mb,
            nodes=[
                Node(
                    node_id=i + 1,
                    broker_port=free_port(),
                    controller_port=free_port(),
                    extra_ports={name: free_port() for name in (extra_listeners or {})},
                )
                for i in range(nodes)
            ],
            extra_props=dict(extra_props or {}),
            extra_listeners=dict(extra_listeners or {}),
            scram_users=list(scram_users or []),
        )
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- persistence, so `escalator kafka stop` can find what `start` launched ---------------
    @property
    def workdir(self) -> Path:
        return Path(self.spec.workdir)

    @property
    def state_file(self) -> Path:
        return self.workdir / "cluster.json"

    def save(self) -> None:
        self.state_file.write_bytes(orjson.dumps(asdict(self.spec), option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, workdir: Path) -> LocalKafkaCluster:
        state = workdir / "cluster.json"
        if not state.exists():
            raise KafkaLaunchError(f"no local cluster recorded in {workdir}")
        raw = orjson.loads(state.read_bytes())
        raw["nodes"] = [Node(**n) for n in raw["nodes"]]
        self = cls.__new__(cls)
        self.spec = ClusterSpec(**raw)
        self._procs = {}
        return self

    # -- addresses -----------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.spec.nodes)

    def listener_bootstrap(self, listener: str) -> str:
        return ",".join(f"127.0.0.1:{n.extra_ports[listener]}" for n in self.spec.nodes)

    def node(self, node_id: int) -> Node:
        for n in self.spec.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    # -- configuration -------------------------------------------------------------------------
    def _node_dir(self, node: Node) -> Path:
        return self.workdir / f"node-{node.node_id}"

    def _properties(self, node: Node) -> str:
        count = len(self.spec.nodes)
        rf = min(3, count)
        listeners = [
            f"PLAINTEXT://127.0.0.1:{node.broker_port}",
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
        ]
        advertised = [f"PLAINTEXT://127.0.0.1:{node.broker_port}"]
        protocol_map = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
        for name, protocol in self.spec.extra_listeners.items():
            listeners.append(f"{name}://127.0.0.1:{node.extra_ports[name]}")
            advertised.append(f"{name}://127.0.0.1:{node.extra_ports[name]}")
            protocol_map.append(f"{name}:{protocol}")
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocol_map),
            "log.dirs": str(self._node_dir(node) / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min(2, rf)),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(min(2, rf)),
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(min(2, rf)),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.flush.interval.messages": "9223372036854775807",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if count == 1:
            props["controller.quorum.bootstrap.servers"] = f"127.0.0.1:{node.controller_port}"
        else:
            props["controller.quorum.voters"] = ",".join(
                f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.spec.nodes
            )
        props.update(self.spec.extra_props)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").exists():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise KafkaLaunchError("java is not on PATH; Kafka 4.x needs Java 17 or newer")
        return java

    def _jvm_cmd(self, libs: Path, node: Node, main: str, args: list[str]) -> list[str]:
        node_dir = self._node_dir(node)
        return [
            self._java(),
            f"-Xmx{self.spec.heap_mb}m",
            f"-Xms{min(self.spec.heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={libs.parent / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node_dir / 'logs'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format(self, libs: Path) -> None:
        if not self.spec.cluster_id:
            self.spec.cluster_id = _random_cluster_id()
        for node in self.spec.nodes:
            node_dir = self._node_dir(node)
            (node_dir / "logs").mkdir(parents=True, exist_ok=True)
            config = node_dir / "server.properties"
            config.write_text(self._properties(node))
            args = ["format", "-t", self.spec.cluster_id, "-c", str(config), "--ignore-formatted"]
            if len(self.spec.nodes) == 1:
                args.append("--standalone")
            for user in self.spec.scram_users:
                args += ["--add-scram", user]
            proc = subprocess.run(
                self._jvm_cmd(libs, node, STORAGE_TOOL, args),
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise KafkaLaunchError(
                    f"formatting node {node.node_id} failed:\n{(proc.stdout + proc.stderr)[-2000:]}"
                )

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> None:
        """Fetch (once), format, launch every node and wait until all brokers answer."""
        libs = ensure_kafka_libs(self.spec.version)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._format(libs)
        for node in self.spec.nodes:
            self._launch(libs, node)
        self.save()
        self.wait_ready(timeout_s=timeout_s)

    def restart(self, timeout_s: float = 90.0) -> None:
        """Start a stopped cluster again on its directory: same data, same ports, same cluster
        id (``escalator kafka stop`` / ``start``). A port taken meanwhile is named."""
        for node in self.spec.nodes:
            ports = {"broker": node.broker_port, "controller": node.controller_port}
            ports |= {f"{name} listener": port for name, port in node.extra_ports.items()}
            for role, port in ports.items():
                if not port_free(port):
                    raise KafkaLaunchError(
                        f"node {node.node_id}'s {role} port {port} (recorded in "
                        f"{self.state_file}) is in use by another process; stop it, or start "
                        "a new cluster with --fresh (new ports, no data)"
                    )
        self.start(timeout_s=timeout_s)

    def _launch(self, libs: Path, node: Node) -> None:
        node_dir = self._node_dir(node)
        out = (node_dir / "logs" / "stdout.log").open("ab")
        proc = subprocess.Popen(
            self._jvm_cmd(libs, node, MAIN_CLASS, [str(node_dir / "server.properties")]),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        node.pid = proc.pid
        self._procs[node.node_id] = proc

    def start_node(self, node_id: int, timeout_s: float = 90.0) -> None:
        """Restart one node that was stopped or killed, and wait for the full cluster."""
        libs = ensure_kafka_libs(self.spec.version)
        self._launch(libs, self.node(node_id))
        self.save()
        self.wait_ready(timeout_s=timeout_s)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        self._signal(self.node(node_id), signal.SIGKILL, wait_s=10.0)

    def stop_node(self, node_id: int, timeout_s: float = 30.0) -> None:
        self._signal(self.node(node_id), signal.SIGTERM, wait_s=timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every node (a controlled shutdown), SIGKILL any that outlive the timeout."""
        for node in self.spec.nodes:
            if node.pid is not None and _alive(node.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGTERM)
        for node in self.spec.nodes:
            self._signal(node, signal.SIGTERM, wait_s=timeout_s)
        self.save()

    def _signal(self, node: Node, sig: signal.Signals, wait_s: float) -> None:
        pid = node.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        proc = self._procs.pop(node.node_id, None)
        if proc is not None:  # our child: wait() reaps it
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        else:  # launched by another process (the CLI): poll the pid
            deadline = time.monotonic() + wait_s
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        node.pid = None

    def _reap(self, node_id: int) -> None:
        proc = self._procs.get(node_id)
        if proc is not None:
            proc.poll()

    def alive_nodes(self) -> list[int]:
        return [n.node_id for n in self.spec.nodes if n.pid is not None and _alive(n.pid)]

    def wait_ready(self, timeout_s: float = 90.0, expect_brokers: int | None = None) -> None:
        """Block until a metadata request lists ``expect_brokers`` brokers (default: all)."""
        want = expect_brokers if expect_brokers is not None else len(self.spec.nodes)
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            for node in self.spec.nodes:
                if node.pid is not None and not _alive(node.pid):
                    self._reap(node.node_id)
                    if not _alive(node.pid):
                        raise KafkaLaunchError(
                            f"node {node.node_id} exited during start-up; see "
                            f"{self._node_dir(node) / 'logs'}"
                        )
            try:
                seen = asyncio.run(broker_count(self.bootstrap_servers))
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = repr(exc)
            else:
                if seen >= want:
                    return
                last_error = f"{seen}/{want} brokers registered"
            time.sleep(0.5)
        raise KafkaLaunchError(f"cluster not ready after {timeout_s:.0f}s: {last_error}")

    def server_log(self, node_id: int = 1) -> Path:
        return self._node_dir(self.node(node_id)) / "logs" / "server.log"


def kafka_version_from_log(log: Path) -> str | None:
    """The broker logs ``Kafka version: X`` at start-up; return X if the log has it."""
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        marker = "Kafka version: "
        if marker in line:
            return line.split(marker, 1)[1].split()[0]
    return None


async def broker_count(bootstrap: str) -> int:
    """Brokers listed by one metadata request (the readiness probe)."""
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    # Refused connections are expected while the broker boots; aiokafka logs each at ERROR.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), timeout=5)
        info = await asyncio.wait_for(admin.describe_cluster(), timeout=5)
        return len(info["brokers"])
    finally:
        await admin.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at /proc to tell.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _random_cluster_id() -> str:
    """A base64url-encoded UUID, the form ``kafka-storage random-uuid`` prints.

    Like Kafka's own ``Uuid.randomUuid``, never start with '-': the storage tool's argument
    parser would read such an id as an option.
    """
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid
