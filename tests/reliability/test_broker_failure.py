"""Scenario 2: broker failures. One broker of three SIGKILLed and restarted mid-run; a
single-node broker restarted fully; a single-node broker stopped for a while, twice, with the
service as a process (readiness, the log's size, recovery, SIGTERM in the outage); and
aiokafka's idempotent producer dying on OutOfOrderSequenceNumber (aiokafka issue 1017), which
the service must detect and repair."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from escalator.config import load_settings
from escalator.kafka.clients import create_topics
from escalator_dev.kafka_local import LocalKafkaCluster, free_port
from tests.conftest import running_sim
from tests.integration.harness import make_env, produce, running_service
from tests.reliability.common import (
    Feeder,
    LedgerReader,
    ServiceProcess,
    ledger_row,
    metric_sum,
    paced_produce,
    read_ledger,
    report,
    request_values,
    scaled,
)


async def _topics(env: dict[str, str], replication: int) -> Any:
    settings = load_settings(env)
    t = settings.topics
    # Every topic `escalator topics create` makes: the service waits (not ready) until the
    # topics it reads or writes exist, the parked topic included while ESCALATOR_PARKING is on.
    await create_topics(settings.kafka, t.all(), settings.topic_partitions, replication)
    return settings


async def _until_service_ready(service: Any, limit_s: float) -> list[Any]:
    """Poll an in-process service's health until every tier is ready, or ``limit_s`` passed;
    return the last health (the assertion shows each tier's reason)."""
    deadline = time.monotonic() + limit_s
    health = service.health()
    while not service.ready() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        health = service.health()
    return health


@pytest.mark.timeout(1200)
async def test_one_of_three_brokers_killed_and_restarted(unique: str, tmp_path: Path) -> None:
    """One broker of three SIGKILLed a third of the way into paced production, restarted 10 s
    later: the service keeps working by itself (RF 3, min.insync.replicas 2), nothing lost,
    nothing dead-lettered. The schedule is the clock's, and production runs at a set rate, so
    requests keep arriving through the fault however fast the machine is."""
    cluster = LocalKafkaCluster(tmp_path / "kafka3", nodes=3)
    await asyncio.to_thread(cluster.start, 180)
    try:
        bootstrap = cluster.bootstrap_servers
        rate = 40.0
        n = scaled(8_000, 1_600)
        with running_sim() as sim_url:
            env = make_env(bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0")
            settings = await _topics(env, replication=3)
            ids = {f"{unique}-{i}" for i in range(n)}
            async with running_service(env, ["cheap", "strong"]) as service:
                started = time.monotonic()
                producing = asyncio.create_task(
                    paced_produce(
                        bootstrap, settings.topics.requests, request_values(n, unique), rate
                    )
                )
                await asyncio.sleep(n / rate / 3)
                # Production is paced, so it cannot have finished (on any machine): the broker
                # dies while requests still arrive and are worked on.
                assert not producing.done(), "production ended before the fault"
                await asyncio.to_thread(cluster.kill_node, 2)
                await asyncio.sleep(10)
                await asyncio.to_thread(cluster.start_node, 2, 180)
                await producing
                ledger = await read_ledger(
                    bootstrap,
                    settings.topics.results,
                    settings.topics.dead_letter,
                    ids,
                    timeout_s=300,
                )
                recreated = metric_sum(service, "escalator_producer_recreated_total")
                assert service.ready(), "the service did not recover by itself"
            elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(cluster.stop)
    report(
        "broker failure (1 of 3)",
        load=f"{n} requests at {rate:g}/s, RF 3, min.insync.replicas 2",
        fault="SIGKILL broker 2 a third of the way in, restart it 10 s later",
        duration_s=round(elapsed, 1),
        producer_recreated=recreated,
        **ledger_row(ledger),
    )
    assert ledger.lost == [], f"lost {len(ledger.lost)}"
    assert not ledger.dead, dict(ledger.dead)


@pytest.mark.timeout(1200)
async def test_single_broker_restarted_fully(unique: str, tmp_path: Path) -> None:
    """The only broker SIGKILLed while a backlog is being worked through, restarted 8 s
    later: the service recovers by itself, nothing lost, nothing dead-lettered.

    A feeder keeps ``floor`` requests outstanding until ``n`` were produced (so the service is
    in full swing, at any machine speed); then production stops and the broker is killed at
    once, with that backlog still in the system."""
    cluster = LocalKafkaCluster(tmp_path / "kafka1", nodes=1)
    await asyncio.to_thread(cluster.start, 120)
    try:
        bootstrap = cluster.bootstrap_servers
        n = scaled(6_000, 1_500)
        floor = scaled(2_000, 1_000)
        with running_sim("--latency", "uniform:5:20") as sim_url:
            env = make_env(bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0")
            settings = await _topics(env, replication=1)
            async with running_service(env, ["cheap", "strong"]) as service:
                started = time.monotonic()
                reader = LedgerReader(
                    bootstrap, settings.topics.results, settings.topics.dead_letter
                )
                await reader.start()
                try:
                    feeder = Feeder(
                        bootstrap, settings.topics.requests, reader, unique, floor=floor
                    )
                    await feeder.start()
                    try:
                        await feeder.wait_produced(n)
                    finally:
                        produced = await feeder.stop()
                finally:
                    # Before the kill: aiokafka's consumer, stopped while its broker is down,
                    # raises CancelledError out of stop() (its fetcher's pending requests).
                    await reader.stop()
                killed_ms = int(time.time() * 1000)
                await asyncio.to_thread(cluster.kill_node, 1)
                ids = set(reader.ledger.expected)
                await asyncio.sleep(8)
                await asyncio.to_thread(cluster.start_node, 1, 120)
                ledger = await read_ledger(
                    bootstrap,
                    settings.topics.results,
                    settings.topics.dead_letter,
                    ids,
                    timeout_s=300,
                )
                # Work the broker's death interrupted: ids whose first result was written
                # after the kill (a lower bound: results sent before it but acknowledged
                # after the restart carry an earlier stamp).
                after_kill = sum(
                    1 for stamps in ledger.results.values() if min(stamps) >= killed_ms
                )
                recreated = metric_sum(service, "escalator_producer_recreated_total")
                produce_errors = metric_sum(service, "escalator_produce_errors_total")
                # Ready again by itself: the broker watch needs one good probe after the
                # restart (a deadline against hangs, not a timing).
                health = await _until_service_ready(service, 120)
                assert all(h.ready for h in health), health
            elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(cluster.stop)
    report(
        "broker restart (single node)",
        load=f"at least {floor} requests outstanding until {n} were produced",
        fault="SIGKILL the only broker as production stops, restart it 8 s later",
        produced=produced,
        results_after_kill=after_kill,
        duration_s=round(elapsed, 1),
        producer_recreated=recreated,
        produce_errors=produce_errors,
        **ledger_row(ledger),
    )
    assert after_kill > 0, "the backlog was done before the broker was killed"
    assert ledger.lost == [], f"lost {len(ledger.lost)}"
    assert not ledger.dead, dict(ledger.dead)


@pytest.mark.timeout(600)
async def test_producer_dead_after_out_of_order_sequence_is_replaced(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """Make aiokafka's sender task die the way issue 1017 describes, mid-stream."""
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0")
    settings = load_settings(env)
    n = 400
    ids = {f"{unique}-{i}" for i in range(n)}
    values = request_values(n, unique)
    async with running_service(env, ["cheap", "strong"]) as service:
        await produce(kafka_bootstrap, settings.topics.requests, values[:100])
        sender = service.producer.get()._sender
        real = sender._send_produce_req
        fired: list[bool] = []

        async def once_out_of_order(*args: Any, **kwargs: Any) -> Any:
            if not fired:
                fired.append(True)
                raise OutOfOrderSequenceNumber()
            return await real(*args, **kwargs)

        sender._send_produce_req = once_out_of_order
        await produce(kafka_bootstrap, settings.topics.requests, values[100:])
        ledger = await read_ledger(
            kafka_bootstrap,
            settings.topics.results,
            settings.topics.dead_letter,
            ids,
            timeout_s=180,
        )
        recreated = metric_sum(service, "escalator_producer_recreated_total")
    report(
        "producer OutOfOrderSequenceNumber",
        load=f"{n} requests",
        fault="aiokafka's sender task dies on OutOfOrderSequenceNumber (issue 1017)",
        producer_recreated=recreated,
        **ledger_row(ledger),
    )
    assert fired, "the fault was never injected"
    assert recreated == 1, (
        "one fault, one replacement: late errors from the old producer must not replace the new one"
    )
    assert ledger.lost == [] and not ledger.dead


async def _readiness(port: int) -> tuple[int, dict[str, Any]] | None:
    """(status, body) of the service's /readyz, or None if it does not answer."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                body: dict[str, Any] = await response.json()
                return response.status, body
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _until_ready(
    port: int, want: bool, process: ServiceProcess, limit_s: float
) -> dict[str, Any]:
    """Poll /readyz until it says ``want`` (a deadline against hangs, not a timing)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert process.alive(), "the service exited"
        got = await _readiness(port)
        if got is not None and (got[0] == 200) == want:
            return got[1]
        await asyncio.sleep(0.5)
    raise AssertionError(f"/readyz never said ready={want}")


def _log_lines(path: Path) -> int:
    with path.open("rb") as log:
        return sum(1 for _ in log)


@pytest.mark.timeout(1200)
async def test_broker_outage_readiness_quiet_log_resume_and_sigterm(
    unique: str, tmp_path: Path
) -> None:
    """The only broker stopped under load, twice, with the service as its own process.

    First outage: /readyz turns 503 with the reason (``kafka_unreachable``) after
    ESCALATOR_KAFKA_UNREACHABLE_S, the log holds a bounded number of lines however long the
    outage (the first of each kind and a summary per interval, not a line per retry), and
    when the broker is back the service is ready again by itself. Second outage: SIGTERM
    while the broker is down ends the process within the grace, exit 0, no traceback. A new
    process after the broker returns finishes the work: nothing lost, nothing dead-lettered,
    duplicates within the documented window (max_uncommitted + max_in_flight per tier, per
    event)."""
    cluster = LocalKafkaCluster(tmp_path / "kafka1", nodes=1)
    await asyncio.to_thread(cluster.start, 120)
    n = scaled(6_000, 1_500)
    floor = scaled(2_000, 600)
    grace_s = 10.0
    max_in_flight, max_uncommitted = 16, 64
    metrics_port = free_port()
    process: ServiceProcess | None = None
    try:
        bootstrap = cluster.bootstrap_servers
        with running_sim("--latency", "uniform:5:20") as sim_url:
            env = make_env(
                bootstrap,
                sim_url,
                unique,
                ESCALATOR_SHADOW_RATE="0",
                ESCALATOR_METRICS_PORT=str(metrics_port),
                ESCALATOR_KAFKA_UNREACHABLE_S="5",
                ESCALATOR_SHUTDOWN_GRACE_S=str(grace_s),
                ESCALATOR_MAX_IN_FLIGHT=str(max_in_flight),
                ESCALATOR_MAX_UNCOMMITTED=str(max_uncommitted),
                ESCALATOR_LOG_LEVEL="WARNING",  # the lines an outage used to flood
            )
            settings = await _topics(env, replication=1)
            log_path = tmp_path / "service.log"
            process = ServiceProcess(env, "all", log_path)
            process.start()
            await _until_ready(metrics_port, True, process, 120)

            async def load() -> set[str]:
                """Keep a backlog until n more were produced; stop the clients (their
                broker is about to go); the ids produced so far."""
                reader = LedgerReader(
                    bootstrap, settings.topics.results, settings.topics.dead_letter
                )
                await reader.start()
                try:
                    feeder = Feeder(
                        bootstrap, settings.topics.requests, reader, f"{unique}-{time.time_ns()}",
                        floor=floor,
                    )  # fmt: skip
                    await feeder.start()
                    try:
                        await feeder.wait_produced(n)
                    finally:
                        await feeder.stop()
                finally:
                    await reader.stop()
                return set(reader.ledger.expected)

            ids = await load()
            # Outage 1: readiness, a quiet log, and recovery by itself.
            before = _log_lines(log_path)
            await asyncio.to_thread(cluster.stop_node, 1)
            down = await _until_ready(metrics_port, False, process, 120)
            held = {t["held"] for t in down["tiers"]}
            assert held == {"kafka_unreachable"}, down
            assert "no Kafka broker has answered" in down["tiers"][0]["message"]
            # Stay down a while longer: aiokafka retries all along (it logged ~120 lines a
            # second before), while the backlog waits.
            await asyncio.sleep(15)
            outage_s = 15 + 5
            await asyncio.to_thread(cluster.start_node, 1, 120)
            during = _log_lines(log_path) - before
            await _until_ready(metrics_port, True, process, 180)
            text = log_path.read_text()
            assert "Traceback" not in text
            assert '"event":"kafka_unreachable"' in text
            assert '"event":"kafka_reachable_again"' in text
            # The first line of each kind (aiokafka's and ours), a summary line per minute.
            allowed = 40 + 5 * (1 + outage_s // 60)
            assert during <= allowed, f"{during} log lines in an outage of about {outage_s} s"
            ids |= await load()

            # Outage 2: SIGTERM while the broker is down.
            await asyncio.to_thread(cluster.stop_node, 1)
            await _until_ready(metrics_port, False, process, 120)
            stopped = time.monotonic()
            code = await asyncio.to_thread(process.terminate, grace_s + 30)
            took = time.monotonic() - stopped
            assert code == 0, log_path.read_text()[-3000:]
            assert "Traceback" not in log_path.read_text()
            await asyncio.to_thread(cluster.start_node, 1, 120)

            # A new process finishes what the stopped one left.
            process = ServiceProcess(env, "all", tmp_path / "service2.log")
            process.start()
            ledger = await read_ledger(
                bootstrap,
                settings.topics.results,
                settings.topics.dead_letter,
                ids,
                timeout_s=600,
            )
            assert process.terminate() == 0
            process = None
    finally:
        if process is not None:
            process.terminate()
        await asyncio.to_thread(cluster.stop)
    window = 2 * (max_uncommitted + max_in_flight)  # per event, both tiers
    report(
        "broker outage (single node, stopped twice)",
        load=f"at least {floor} requests outstanding until {n} more were produced, twice",
        fault="broker stopped 20 s then restarted; stopped again, service SIGTERMed, restarted",
        log_lines_during_outage=during,
        sigterm_to_exit_s=round(took, 1),
        duplicate_window=2 * window,
        **ledger_row(ledger),
    )
    assert ledger.lost == [], f"lost {len(ledger.lost)}"
    assert not ledger.dead, dict(ledger.dead)
    # Two events that can make work be redone: the first outage, and the stop in the second.
    assert ledger.duplicated <= 2 * window, ledger.duplicated
