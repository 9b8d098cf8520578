"""Reading tier 0's pairs from the topics themselves: the requests topic joined with the
results topic (tier0/pairs.py, ``join``), each read without a consumer group (nothing
committed, nobody's offsets move; kafka/clients.py, ``read_to_end``), ``read_committed``.
Only what both topics still retain can be read."""

from __future__ import annotations

from escalator.config import KafkaSettings
from escalator.tier0.pairs import Pair, join


async def read_pairs(
    kafka: KafkaSettings,
    requests_topic: str,
    results_topic: str,
    since_ms: int | None,
    until_ms: int | None,
) -> list[Pair]:
    """The pairs of the requests in [since, until): their results may come later, so the
    results topic is read from ``since_ms`` to its end."""
    from escalator.kafka.clients import read_to_end

    requests = [
        (r.timestamp, r.value)
        async for r in read_to_end(
            kafka, requests_topic, since_ms=since_ms, isolation_level="read_committed"
        )
        if until_ms is None or r.timestamp < until_ms
    ]
    results = [
        r.value
        async for r in read_to_end(
            kafka, results_topic, since_ms=since_ms, isolation_level="read_committed"
        )
    ]
    return join(requests, results)
