"""A fake producer's half of aiokafka's batch API (``create_batch``/``send_batch``), built on
its ``send``: the delivery strategies produce a batch's outputs as record batches, and the
fakes keep one place (``send``) where a test decides what the broker does with a record.

Like Kafka, a record batch is appended whole or not at all: its future fails if any of its
records' sends fails, and the strategy then sends every record of it again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any


class _Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None, Any]] = []

    def append(
        self, *, timestamp: Any, key: bytes | None, value: bytes | None, headers: Any
    ) -> Any:
        self.records.append((key, value, headers))
        return object()


class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return {0}


class BatchSends:
    """Mix into a fake producer that has ``async send(topic, value, key=, headers=)``."""

    client = SimpleNamespace(cluster=_Cluster())

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        futures = [
            await self.send(topic, value, key=key, headers=headers)  # type: ignore[attr-defined]
            for key, value, headers in batch.records
        ]
        return asyncio.ensure_future(asyncio.gather(*futures))
