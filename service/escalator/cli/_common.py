"""What the command modules share: settings from the environment, produce-and-await, time
parsing. Command modules import this, never each other."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime

from escalator.config import KafkaSettings, Settings, load_settings
from escalator.contract.messages import Headers
from escalator.errors import EscalatorError
from escalator.kafka.clients import make_producer


def settings_from_env(*, require_kafka: bool = True) -> Settings:
    """The settings, validated once; a bad value is one line naming the variable."""
    return load_settings(os.environ, require_kafka=require_kafka)


def parse_time(value: str | None, name: str) -> int | None:
    """``--since``/``--until``: ISO-8601 (UTC if no zone) or epoch milliseconds -> epoch ms."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EscalatorError(f"{name} {value!r} is not ISO-8601 or epoch milliseconds") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


#: One record to produce: topic, key, value, headers.
Outgoing = tuple[str, bytes | None, bytes | None, Headers]


async def produce_and_await(kafka: KafkaSettings, records: Iterable[Outgoing]) -> int:
    """Send every record, then wait for every acknowledgement (``acks=all``, idempotent).

    Returns how many were acknowledged; raises the first KafkaError, after which none of the
    records should be assumed delivered or lost: the caller reports the failure.
    """
    producer = make_producer(kafka)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers or None)
            for topic, key, value, headers in records
        ]
        for fut in futures:
            await fut
    finally:
        await producer.stop()
    return len(futures)
