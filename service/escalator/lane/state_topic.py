"""The state topic on Kafka: :class:`~escalator.lane.runner.StateLog` over the process's
producer (writes wait for every in-sync replica: ``acks=all``), its reading (every partition
from the start to the end offsets seen at the start, group-less, by ``kafka/clients.py``'s
``read_to_end``: the compacted topic is small, one record per open batch), and the lane group's
committed offsets on the hand-off topic (what closes a batch)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient

from escalator.config import KafkaSettings
from escalator.kafka.clients import ProducerHandle, read_to_end, security_kwargs
from escalator.lane.state import BatchState, open_batches


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
        # Tombstones (value None) are read too: they close their batches.
        records = [
            (r.key or b"", r.value)
            async for r in read_to_end(self._kafka, self.topic, isolation_level="read_committed")
        ]
        return open_batches(records)
