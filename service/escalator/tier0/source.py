"""Reading tier 0's pairs from the topics themselves: the requests topic joined with the
results topic (tier0/pairs.py, ``join``), read without a consumer group (nothing committed,
nobody's offsets move), ``read_committed``. Only what both topics still retain can be read."""

from __future__ import annotations

from aiokafka import TopicPartition

from escalator.config import KafkaSettings
from escalator.tier0.pairs import Pair, join

#: How long one fetch waits.
POLL_MS = 500


async def _read(
    kafka: KafkaSettings, topic: str, since_ms: int | None
) -> list[tuple[int, bytes | None]]:
    """(timestamp ms, value) of every record from ``since_ms`` (or the start) to the end
    offsets seen when the read began."""
    from escalator.kafka.clients import make_consumer, stop_consumer, topic_partitions

    consumer = make_consumer(kafka, None, isolation_level="read_committed")
    out: list[tuple[int, bytes | None]] = []
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in await topic_partitions(kafka, topic)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        if since_ms is None:
            await consumer.seek_to_beginning(*tps)
        else:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else end[tp])
        remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=POLL_MS)
            for tp, got in batch.items():
                out.extend((r.timestamp, r.value) for r in got if r.offset < end[tp])
            for tp in list(remaining):
                # Positions, not offsets read: transaction markers take offsets too.
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await stop_consumer(consumer, timeout_s=10)
    return out


async def read_pairs(
    kafka: KafkaSettings,
    requests_topic: str,
    results_topic: str,
    since_ms: int | None,
    until_ms: int | None,
) -> list[Pair]:
    """The pairs of the requests in [since, until): their results may come later, so the
    results topic is read from ``since_ms`` to its end."""
    requests = [
        (ts, v)
        for ts, v in await _read(kafka, requests_topic, since_ms)
        if until_ms is None or ts < until_ms
    ]
    results = [v for _, v in await _read(kafka, results_topic, since_ms)]
    return join(requests, results)
