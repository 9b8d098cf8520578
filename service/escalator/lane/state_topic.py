"""The state topic on Kafka: :class:`~escalator.lane.runner.StateLog` over the process's
producer (writes wait for every in-sync replica: ``acks=all``), a group-less reader that
reads every partition from the start to its end (the compacted topic is small: one record per
open batch), and the lane group's committed offsets on the hand-off topic (what closes a
batch)."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from escalator.config import KafkaSettings
from escalator.kafka.clients import (
    ProducerHandle,
    make_consumer,
    security_kwargs,
    stop_consumer,
)
from escalator.lane.state import BatchState, open_batches

#: How often the reader looks for its partitions' assignment (every 50 ms).
ASSIGN_TRIES = 200
#: How long one read of the state topic waits for records (ms), per fetch.
FETCH_MS = 500


class KafkaStateLog:
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        producer: ProducerHandle,
        *,
        handoff: str,
        group: str,
    ) -> None:
        self._kafka = kafka
        self.topic = topic
        self._producer = producer
        self._handoff = handoff
        self._group = group

    async def write(self, state: BatchState) -> None:
        await self._producer.get().send_and_wait(self.topic, state.value(), key=state.key)

    async def close(self, key: bytes) -> None:
        await self._producer.get().send_and_wait(self.topic, None, key=key)

    async def committed(self) -> dict[int, int]:
        # A client per call: asked at most once a polling round, and only while an ended
        # batch waits to be closed.
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._kafka.bootstrap_servers, **security_kwargs(self._kafka)
        )
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(self._group)
        finally:
            await admin.close()
        return {
            tp.partition: meta.offset
            for tp, meta in found.items()
            if tp.topic == self._handoff and meta.offset >= 0
        }

    async def read(self) -> dict[bytes, BatchState]:
        consumer = make_consumer(self._kafka, None, isolation_level="read_committed")
        # Group-less: subscribing assigns every partition of the topic, read from the start.
        consumer.subscribe([self.topic])
        await consumer.start()
        try:
            for _ in range(ASSIGN_TRIES):
                tps = sorted(consumer.assignment())
                if tps:
                    break
                await asyncio.sleep(0.05)
            else:
                raise KafkaError(f"no partitions of {self.topic} after {ASSIGN_TRIES} tries")
            ends = await consumer.end_offsets(tps)
            records: list[tuple[bytes, bytes | None]] = []
            left = {tp for tp in tps if ends[tp] > 0}
            while left:
                batches = await consumer.getmany(*left, timeout_ms=FETCH_MS)
                for tp, batch in batches.items():
                    records += [(r.key or b"", r.value) for r in batch if r.offset < ends[tp]]
                left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
            return open_batches(records)
        finally:
            await stop_consumer(consumer)
