"""Session fixtures: the real Kafka broker and the Messages-API simulator.

The broker is started once per session from Maven artifacts (or taken from
``KAFKA_BOOTSTRAP_SERVERS``); the simulator runs in its own process, as in production.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from escalator_dev.emulator import server as sim
from escalator_dev.kafka_local import LocalKafkaCluster, kafka_version_from_log

KAFKA_VERSION_SEEN: list[str] = []
#: Broker-level settings of the session broker. The retention tests need the broker to delete
#: within seconds: a retention check every second (Kafka's default is 5 minutes), and the first
#: one a second after start-up (30 s by default). Every other test's topics keep Kafka's 7-day
#: default, for which a check is a no-op scan.
SESSION_BROKER_PROPS = {
    "log.retention.check.interval.ms": "1000",
    "log.initial.task.delay.ms": "1000",
}


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real broker: the one in KAFKA_BOOTSTRAP_SERVERS, or a local one."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        KAFKA_VERSION_SEEN.append(f"external cluster at {existing}")
        yield existing
        return
    cluster = LocalKafkaCluster(
        tmp_path_factory.mktemp("kafka"), nodes=1, extra_props=dict(SESSION_BROKER_PROPS)
    )
    started = time.monotonic()
    cluster.start()
    version = kafka_version_from_log(cluster.server_log()) or "unknown"
    KAFKA_VERSION_SEEN.append(
        f"Apache Kafka {version} (KRaft, 1 node) at {cluster.bootstrap_servers}, "
        f"ready in {time.monotonic() - started:.1f}s"
    )
    try:
        yield cluster.bootstrap_servers
    finally:
        cluster.stop()


@contextlib.contextmanager
def running_sim(*args: str) -> Iterator[str]:
    """`escalator sim` in its own process on a free port, for the block; yields its base URL."""
    proc, url = sim.spawn(*args)
    try:
        yield url
    finally:
        sim.terminate(proc)


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """Base URL of a fault-free, zero-latency simulator shared by the session."""
    with running_sim() as url:
        yield url


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so each test has its own topics and groups."""
    return uuid.uuid4().hex[:10]


def pytest_report_header(config: pytest.Config) -> str:
    return f"escalator tests; python {sys.version.split()[0]}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in KAFKA_VERSION_SEEN:
        terminalreporter.write_line(f"broker under test: {line}")


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
