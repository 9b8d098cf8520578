"""Replacing a producer whose sender died (aiokafka issue 1017)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber

from escalator.kafka.clients import ProducerHandle


class _Task:
    def __init__(self) -> None:
        self.dead = False

    def done(self) -> bool:
        return self.dead


class FakeProducer:
    """Stands in for AIOKafkaProducer: only what ProducerHandle touches."""

    def __init__(self) -> None:
        self._sender = type("S", (), {})()
        self._sender.sender_task = _Task()
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        await asyncio.sleep(0)  # aiokafka's stop talks to the broker: it always yields
        self.stopped = True

    async def flush(self) -> None:
        return None


def test_handle_replaces_producer_whose_sender_died() -> None:
    made: list[FakeProducer] = []
    reasons: list[str] = []

    def factory() -> Any:
        made.append(FakeProducer())
        return made[-1]

    async def scenario() -> None:
        handle = ProducerHandle(factory, on_recreate=reasons.append)
        await handle.start()
        # A timeout on a healthy producer is not a reason to replace it.
        assert not await handle.repair(KafkaTimeoutError())
        assert handle.get() is made[0]
        made[0]._sender.sender_task.dead = True  # what OutOfOrderSequenceNumber does
        assert not handle.healthy()
        # Many failing sends at once: one replacement.
        results = await asyncio.gather(*(handle.repair(KafkaTimeoutError()) for _ in range(5)))
        assert all(results)
        assert len(made) == 2 and made[0].stopped and made[1].started
        assert handle.get() is made[1] and handle.healthy()
        # A fatal error replaces even a producer whose sender still runs.
        assert await handle.repair(OutOfOrderSequenceNumber())
        assert len(made) == 3
        # A send that was waiting on a replaced producer fails late: the healthy successor stays.
        assert await handle.repair(OutOfOrderSequenceNumber(), failed=made[1])  # type: ignore[arg-type]
        assert len(made) == 3 and handle.get() is made[2]

    asyncio.run(scenario())
    assert reasons == ["KafkaTimeoutError", "OutOfOrderSequenceNumber"]


class _Cluster:
    def __init__(self, partitions: dict[str, int], down: set[tuple[str, int]]) -> None:
        self.partitions = partitions
        self.down = down

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions[topic]))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return {p for p in range(self.partitions[topic]) if (topic, p) not in self.down}


class _Metadata:
    def __init__(self, partitions: dict[str, int], down: set[tuple[str, int]]) -> None:
        self.client = type("C", (), {"cluster": _Cluster(partitions, down)})()
        self.asked: list[str] = []

    async def partitions_for(self, topic: str) -> set[int]:
        self.asked.append(topic)
        return self.client.cluster.partitions_for_topic(topic)


def test_outputs_are_grouped_by_the_partition_send_would_pick() -> None:
    """The batch path must put each keyed record where ``send`` would (aiokafka's default
    partitioner, murmur2 as the Java client): the same key keeps its partition, so a
    request's result and its decision land where consumers expect them. Keyless records go
    to an available partition."""
    from aiokafka.partitioner import DefaultPartitioner

    from escalator.engine.delivery import Output
    from escalator.kafka.clients import group_by_partition

    producer = _Metadata({"results": 6, "decisions": 3}, down={("results", 2)})
    outputs = [
        Output(topic, f"{topic}-{i}".encode(), f"key-{i}".encode())
        for i in range(200)
        for topic in ("results", "decisions")
    ] + [Output("results", f"keyless-{i}".encode(), None) for i in range(50)]
    groups = asyncio.run(group_by_partition(producer, outputs))  # type: ignore[arg-type]
    assert sorted(producer.asked) == ["decisions", "results"], "metadata once per topic"
    assert sum(len(g) for g in groups.values()) == len(outputs)
    pick = DefaultPartitioner()
    for (topic, partition), group in groups.items():
        every = sorted(producer.client.cluster.partitions_for_topic(topic))
        for out in group:
            if out.key is None:
                assert (topic, partition) != ("results", 2), "keyless: an available partition"
            else:
                assert partition == pick(out.key, every, every)
        order = [outputs.index(out) for out in group]
        assert order == sorted(order), "order kept within a partition"
    assert len({p for t, p in groups if t == "results"}) == 6
