"""Scenario 2: broker failures. One broker of three SIGKILLed and restarted mid-run; a
single-node broker restarted fully; and aiokafka's idempotent producer dying on
OutOfOrderSequenceNumber (aiokafka issue 1017), which the service must detect and repair.
The service is never restarted in these tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from escalator.config import load_settings
from escalator.kafka.clients import create_topics
from escalator_dev.kafka_local import LocalKafkaCluster
from tests.conftest import running_sim
from tests.integration.harness import make_env, produce, running_service
from tests.reliability.common import (
    Feeder,
    LedgerReader,
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
    await create_topics(
        settings.kafka,
        [t.requests, t.escalations, t.results, t.dead_letter, t.decisions],
        settings.topic_partitions,
        replication,
    )
    return settings


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
                assert service.ready()
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
