"""The parked topic read back: what waits there, and its replay to the source topics.

Replay follows the dead-letter replay rule (``cli/deadletters.py``): each record goes back to
its source topic (``x-escalator-source-topic``: requests, escalations, reviews or
adjudications) with its original key, value and headers, plus ``x-escalator-replay-of:
<topic>/<partition>/<offset>`` naming the parked record, through ``produce_and_await`` (every
record acknowledged, ``acks=all``). Unlike dead letters, what was replayed is remembered: the
scan reads as the consumer group ``ESCALATOR_PARKED_REPLAY_GROUP`` from its committed offsets
to the end offsets seen at the start, and commits those ends only after every record is
acknowledged. A replay run twice sends nothing twice; one that fails midway sends again what
it had not committed (at least once, like everything else here).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from escalator.config import Settings
from escalator.contract.parking import ParkedInfo
from escalator.errors import EscalatorError
from escalator.kafka.clients import Outgoing, make_consumer, produce_and_await, topic_partitions


@dataclass
class ParkedScan:
    """What the parked topic holds beyond what the replay group has committed."""

    #: (source topic, hold reason) -> records waiting to be replayed.
    waiting: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Offsets the replay group has passed (from the log start): records replayed by earlier
    #: runs, plus transaction markers when the parked topic was written exactly-once.
    offsets_replayed: int = 0
    replayed: int = 0
    #: Waiting records whose source is not an input topic of this configuration.
    unreplayable: int = 0
    #: The earliest ``held-since`` among the waiting records (epoch ms).
    held_since_ms: int | None = None
    #: The latest end of a hold the API announced (ISO), among the waiting records.
    hold_ends_at: str | None = None

    @property
    def total(self) -> int:
        return sum(self.waiting.values()) + self.unreplayable


def replayable_sources(settings: Settings) -> set[str]:
    t = settings.topics
    return {t.requests, t.escalations, t.reviews, t.adjudications}


async def scan_parked(settings: Settings, *, replay: bool = False) -> ParkedScan:
    """Read what waits on the parked topic; with ``replay``, send it back and commit."""
    result = ParkedScan()
    sources = replayable_sources(settings)
    topic = settings.topics.parked
    tps = [TopicPartition(topic, p) for p in await topic_partitions(settings.kafka, topic)]
    consumer = make_consumer(
        settings.kafka,
        settings.parking.replay_group,
        client_id=settings.kafka.client_id + "-parked",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        start = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        for tp in tps:
            done = await consumer.committed(tp)
            position = start[tp] if done is None or done < start[tp] else done
            result.offsets_replayed += position - start[tp]
            consumer.seek(tp, position)

        async def records() -> AsyncIterator[Outgoing]:
            remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, found in batch.items():
                    for record in found:
                        if record.offset >= end[tp]:
                            continue
                        info = ParkedInfo.from_headers(record.headers)
                        _note(result, info)
                        if info.source_topic not in sources:
                            result.unreplayable += 1
                            continue
                        result.waiting[(info.source_topic, info.reason)] += 1
                        origin = f"{record.topic}/{record.partition}/{record.offset}"
                        yield (
                            info.source_topic,
                            record.key,
                            record.value,
                            info.replay_headers(origin),
                        )
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)

        if replay:
            sent = await produce_and_await(settings.kafka, records())
            # Every record is acknowledged: only now does the group move past them.
            await consumer.commit({tp: OffsetAndMetadata(end[tp], "") for tp in tps})
            result.replayed = sent
        else:
            async for _ in records():
                pass
    finally:
        await consumer.stop()
    return result


def _note(result: ParkedScan, info: ParkedInfo) -> None:
    if info.held_since_ms is not None:
        earliest = result.held_since_ms
        result.held_since_ms = (
            info.held_since_ms if earliest is None else min(earliest, info.held_since_ms)
        )
    if info.hold_ends_at is not None:
        latest = result.hold_ends_at
        result.hold_ends_at = (
            info.hold_ends_at if latest is None else max(latest, info.hold_ends_at)
        )


def hold_not_over(scan: ParkedScan, now_s: float | None = None) -> str | None:
    """Why a replay now would likely be held (and parked) again, or None."""
    ends = scan.hold_ends_at
    now = time.time() if now_s is None else now_s
    if ends is None:
        return None
    try:
        when = datetime.fromisoformat(ends.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise EscalatorError(f"parked records carry an unreadable hold end {ends!r}") from exc
    if when > now:
        return f"the API said the hold ends at {ends}"
    return None
