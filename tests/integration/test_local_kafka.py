"""The local broker launched from Maven artifacts is a real Kafka that aiokafka can use fully."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from escalator_dev.kafka_local import LocalKafkaCluster

pytestmark = pytest.mark.integration


async def create_topic(bootstrap: str, name: str, partitions: int = 3, rf: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, rf)])
        for _ in range(50):
            if name in await admin.list_topics():
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def drain(consumer: AIOKafkaConsumer, want: int, timeout_s: float = 30) -> list[bytes]:
    got: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            got.extend(r.value for r in records if r.value is not None)
    return got


async def test_create_produce_idempotent_consume_in_group_and_commit(
    kafka_bootstrap: str, unique: str
) -> None:
    """Topics are created, an idempotent producer writes, a group reads and commits offsets."""
    topic = f"t-basic-{unique}"
    await create_topic(kafka_bootstrap, topic, partitions=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        for i in range(300):
            await producer.send(topic, f"m{i}".encode(), key=str(i % 7).encode())
        await producer.flush()
    finally:
        await producer.stop()

    group = f"g-{unique}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        got = await drain(consumer, 300)
        await consumer.commit()
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(300))
    assert sum(v or 0 for v in committed.values()) == 300


async def test_transaction_is_seen_by_read_committed_consumer_only_when_committed(
    kafka_bootstrap: str, unique: str
) -> None:
    """A committed transaction is visible to read_committed; an aborted one is not."""
    topic = f"t-txn-{unique}"
    await create_topic(kafka_bootstrap, topic, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{unique}")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(5):
                await producer.send(topic, f"committed-{i}".encode())
        await producer.begin_transaction()
        for i in range(5):
            await producer.send(topic, f"aborted-{i}".encode())
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-last")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        got = await drain(consumer, 6, timeout_s=15)
        # Read a little longer: an aborted record must not show up late.
        got += await drain(consumer, 1, timeout_s=1.5)
    finally:
        await consumer.stop()
    assert got == [f"committed-{i}".encode() for i in range(5)] + [b"committed-last"]


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """A 3-node KRaft cluster on this host, with controller.quorum.voters listing all three."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("an external cluster is in use; the 3-node launcher test needs the local one")
    cluster = LocalKafkaCluster(tmp_path_factory.mktemp("kafka3"), nodes=3)
    cluster.start(timeout_s=120)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(240)
async def test_three_node_cluster_keeps_serving_after_one_node_is_killed(
    three_nodes: LocalKafkaCluster, unique: str
) -> None:
    """With replication 3 and min ISR 2, reads and writes go on after SIGKILL of one node."""
    props = (three_nodes.workdir / "node-1" / "server.properties").read_text()
    assert "controller.quorum.voters=1@" in props and ",3@127.0.0.1:" in props
    bootstrap = three_nodes.bootstrap_servers
    topic = f"t-rf3-{unique}"
    await create_topic(bootstrap, topic, partitions=3, rf=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", request_timeout_ms=20000
    )
    await producer.start()
    try:
        for i in range(100):
            await producer.send_and_wait(topic, f"before-{i}".encode())
        await asyncio.to_thread(three_nodes.kill_node, 2)
        assert three_nodes.alive_nodes() == [1, 3]
        for i in range(100):
            await producer.send_and_wait(topic, f"after-{i}".encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=",".join(f"127.0.0.1:{three_nodes.node(n).broker_port}" for n in (1, 3)),
        group_id=f"g-{unique}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        got = await drain(consumer, 200, timeout_s=60)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(
        [f"before-{i}".encode() for i in range(100)] + [f"after-{i}".encode() for i in range(100)]
    )


@pytest.mark.timeout(180)
def test_cli_start_status_stop(tmp_path: Path) -> None:
    """`escalator kafka start` is up within 60 s (warm cache); status and stop work."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("an external cluster is in use; the launcher CLI is not under test")
    cli = [sys.executable, "-m", "escalator", "kafka"]
    workdir = ["--dir", str(tmp_path / "cli")]
    start = subprocess.run(
        [*cli, "start", *workdir, "--timeout", "60"], capture_output=True, text=True, check=False
    )
    try:
        assert start.returncode == 0, start.stderr
        assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:" in start.stdout
        assert "Apache Kafka 4." in start.stdout
        status = subprocess.run([*cli, "status", *workdir], capture_output=True, text=True)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "ready" in status.stdout
    finally:
        stop = subprocess.run([*cli, "stop", *workdir], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stderr
    after = subprocess.run([*cli, "status", *workdir], capture_output=True, text=True)
    assert after.returncode == 1
    assert "nodes alive: 0/1" in after.stdout


@pytest.mark.timeout(300)
async def test_cli_stop_then_start_keeps_the_data_and_the_port(tmp_path: Path) -> None:
    """`kafka stop` then `kafka start` on the same --dir: the same bootstrap address, and a
    record produced before the stop is still there; --fresh starts a new, empty cluster."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("an external cluster is in use; the launcher CLI is not under test")
    cli = [sys.executable, "-m", "escalator", "kafka"]
    workdir = ["--dir", str(tmp_path / "cli")]

    def kafka(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args, *workdir], capture_output=True, text=True, check=False)

    def address(done: subprocess.CompletedProcess[str]) -> str:
        assert done.returncode == 0, done.stdout + done.stderr
        (line,) = [x for x in done.stdout.splitlines() if x.startswith("KAFKA_BOOTSTRAP")]
        return line.partition("=")[2]

    first = address(await asyncio.to_thread(kafka, "start"))
    try:
        await create_topic(first, "kept", partitions=1)
        producer = AIOKafkaProducer(bootstrap_servers=first, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait("kept", b"before the stop")
        finally:
            await producer.stop()
        assert (await asyncio.to_thread(kafka, "stop")).returncode == 0
        again = await asyncio.to_thread(kafka, "start")
        assert address(again) == first
        assert "data kept" in again.stdout
        consumer = AIOKafkaConsumer("kept", bootstrap_servers=first, auto_offset_reset="earliest")
        await consumer.start()
        try:
            assert await drain(consumer, 1) == [b"before the stop"]
        finally:
            await consumer.stop()
        assert (await asyncio.to_thread(kafka, "stop")).returncode == 0
        fresh = await asyncio.to_thread(kafka, "start", "--fresh")
        assert "new cluster" in fresh.stdout
        admin = AIOKafkaAdminClient(bootstrap_servers=address(fresh))
        await admin.start()
        try:
            assert "kept" not in await admin.list_topics()
        finally:
            await admin.close()
    finally:
        await asyncio.to_thread(kafka, "stop")
