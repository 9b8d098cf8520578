"""What the broker says about a topic's log: its effective retention (``describe_configs``),
each partition's log-start and end offsets, a group's committed offsets, and the record at an
offset (a peek). The retention watch (``engine/parking.py``) and the review console read
deadlines through :class:`KafkaLogView`; the pieces of arithmetic are ``kafka/retention.py``'s.

A peek reads with its own group-less consumer, assigned one partition at a time: it never
touches a tier's consumer, its position or its group.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from escalator.config import KafkaSettings
from escalator.errors import EscalatorError
from escalator.kafka.clients import make_consumer, security_kwargs
from escalator.kafka.retention import TopicRetention, record_log_bytes

#: The topic configs read: retention, what deletes, and what decides when (segments).
RETENTION_CONFIGS = (
    "retention.ms",
    "retention.bytes",
    "cleanup.policy",
    "segment.bytes",
    "segment.ms",
    "message.timestamp.type",
)
#: A peek fetches at most this much per partition (it needs one record; the rest sizes records).
PEEK_FETCH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Peek:
    """The first record at or after an offset: its offset and timestamp, and the mean size in
    the log (an upper bound, ``record_log_bytes``) of the records the fetch brought."""

    offset: int
    timestamp_ms: int
    bytes_per_record: float


def config_entries(response: Any) -> dict[str, dict[str, str | None]]:
    """``{resource name: {config: value}}`` from DescribeConfigs responses (any version);
    raises for a resource the broker answered with an error."""
    out: dict[str, dict[str, str | None]] = {}
    for entry in getattr(response, "resources", []):
        code, message, _type, name, entries = entry[0], entry[1], entry[2], entry[3], entry[4]
        if code:
            raise EscalatorError(f"describing {name!r} failed: {for_code(code).__name__} {message}")
        out[name] = {e[0]: e[1] for e in entries}
    return out


async def describe_configs(
    kafka: KafkaSettings, topics: Iterable[str], admin: AIOKafkaAdminClient | None = None
) -> dict[str, dict[str, str | None]]:
    """The effective configs of each topic (the broker's defaults where the topic sets none)."""
    own = admin is None
    client = admin or AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers, **security_kwargs(kafka)
    )
    if own:
        await client.start()
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        out: dict[str, dict[str, str | None]] = {}
        for response in await client.describe_configs(resources):
            out.update(config_entries(response))
        return out
    finally:
        if own:
            await client.close()


class KafkaLogView:
    """The broker's view of partitions' logs, for the retention watch. Its clients start on
    first use (again after a failure); :meth:`close` stops them."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str) -> None:
        self._kafka = kafka
        self._client_id = client_id
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one peek at a time on the one reader
        self._starting = asyncio.Lock()  # one pair of clients, however many callers wait

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        async with self._starting:
            return await self._start()

    async def _start(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is not None and self._reader is not None:
            return self._admin, self._reader
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._kafka.bootstrap_servers,
            client_id=self._client_id,
            **security_kwargs(self._kafka),
        )
        reader = make_consumer(
            self._kafka,
            None,
            client_id=self._client_id,
            isolation_level="read_committed",
            max_partition_fetch_bytes=PEEK_FETCH_BYTES,
            fetch_max_bytes=PEEK_FETCH_BYTES,
        )
        try:
            await admin.start()
            await reader.start()
        except BaseException:
            await _quietly(reader.stop())
            await _quietly(admin.close())
            raise
        self._admin, self._reader = admin, reader
        return admin, reader

    async def close(self) -> None:
        async with self._starting:
            admin, reader = self._admin, self._reader
            self._admin = self._reader = None
            if reader is not None:
                await _quietly(reader.stop())
            if admin is not None:
                await _quietly(admin.close())

    async def retention(self, topic: str) -> TopicRetention:
        admin, _ = await self._clients()
        configs = await describe_configs(self._kafka, [topic], admin)
        return TopicRetention.from_configs(topic, configs.get(topic, {}))

    async def bounds(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """(log-start offset, end offset) per partition. The end is the last stable offset
        (read_committed), as the tiers see it."""
        _, reader = await self._clients()
        start = await reader.beginning_offsets(tps)
        end = await reader.end_offsets(tps)
        return {tp: (start[tp], end[tp]) for tp in tps if tp in start and tp in end}

    async def committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offset per partition (partitions without one are left out)."""
        admin, _ = await self._clients()
        found = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}

    async def peek(self, tp: TopicPartition, offset: int, timeout_s: float = 5.0) -> Peek | None:
        """The first record at or after ``offset`` (from the log start if that is later), or
        None if none arrives within ``timeout_s`` (nothing there, or only aborted records)."""
        _, reader = await self._clients()
        async with self._lock:
            reader.assign([tp])
            reader.seek(tp, offset)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            try:
                while loop.time() < deadline:
                    batch = await reader.getmany(tp, timeout_ms=200)
                    records = batch.get(tp, [])
                    if records:
                        sizes = [
                            record_log_bytes(
                                r.serialized_key_size, r.serialized_value_size, r.headers or ()
                            )
                            for r in records
                        ]
                        first = records[0]
                        return Peek(first.offset, first.timestamp, sum(sizes) / len(sizes))
                return None
            finally:
                reader.assign([])


async def _quietly(closing: Awaitable[Any]) -> None:
    """Close a client whose connection may be gone already."""
    with contextlib.suppress(KafkaError, OSError, TimeoutError):
        async with asyncio.timeout(10):
            await closing
