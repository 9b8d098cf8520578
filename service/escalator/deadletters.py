"""``escalator dead-letters summary|replay``: look at the dead-letter topic, and send chosen
dead letters back to where they failed, once their cause is fixed.

A dead letter keeps the original key and value bytes and the original headers, plus
``x-escalator-*`` headers saying why and where from (docs/CONTRACT.md). Replay republishes
key, value and the original headers to the source topic (``x-escalator-source-topic``: the
requests topic, or the escalations topic for a strong-tier failure), and adds
``x-escalator-replay-of: <topic>/<partition>/<offset>`` so that the outcome can be traced.

The scan reads the dead-letter topic from the start to the high watermarks it finds when it
begins, so it always ends; it commits nothing and uses no consumer group. Replaying the
same window twice publishes twice: choose the window with ``--since``/``--until`` and the
reasons with ``--reason``. Each replayed record is acknowledged by the broker (idempotent
producer, acks=all) before the count is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from escalator.config import Settings, load_settings
from escalator.errors import EscalatorError
from escalator.kafka_io import check_connection, make_producer, security_kwargs
from escalator.messages import H_PREFIX

REPLAY_HEADER = H_PREFIX + "replay-of"


@dataclass
class Scan:
    scanned: int = 0
    matched: Counter[str] = field(default_factory=Counter)
    replayed: Counter[str] = field(default_factory=Counter)
    unreplayable: int = 0


def _time_ms(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EscalatorError(f"{flag}: {value!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise EscalatorError(f"{flag}: {value!r} has no time zone (add Z or +00:00)")
    return int(moment.timestamp() * 1000)


async def _partitions(settings: Settings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **security_kwargs(settings.kafka)
    )
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0 or not described["partitions"]:
        raise EscalatorError(f"topic {topic!r} does not exist")
    return sorted(p["partition"] for p in described["partitions"])


async def _records(settings: Settings, topic: str) -> AsyncIterator[Any]:
    """Every record of ``topic`` up to the high watermarks seen at the start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=settings.kafka.client_id + "-dead-letters",
        enable_auto_commit=False,
        isolation_level="read_committed",
        **security_kwargs(settings.kafka),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await _partitions(settings, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < end[tp]:
                        yield record
                if records and records[-1].offset >= end[tp] - 1:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def scan(
    settings: Settings,
    *,
    reasons: set[str],
    since_ms: int | None,
    until_ms: int | None,
    replay: bool,
) -> Scan:
    result = Scan()
    producer = make_producer(settings.kafka) if replay else None
    if producer is not None:
        await producer.start()
    pending: list[tuple[str, Any]] = []
    try:
        async for record in _records(settings, settings.topics.dead_letter):
            result.scanned += 1
            headers = {k: v for k, v in record.headers or ()}
            reason = headers.get(H_PREFIX + "reason", b"").decode("utf-8", "replace") or "?"
            try:
                failed_at = int(headers.get(H_PREFIX + "failed-at-ms", b""))
            except ValueError:
                failed_at = record.timestamp
            if reasons and reason not in reasons:
                continue
            if since_ms is not None and failed_at < since_ms:
                continue
            if until_ms is not None and failed_at >= until_ms:
                continue
            result.matched[reason] += 1
            if producer is None:
                continue
            source = headers.get(H_PREFIX + "source-topic", b"").decode("utf-8", "replace")
            if source not in (settings.topics.requests, settings.topics.escalations):
                result.unreplayable += 1
                continue
            original = [(k, v) for k, v in record.headers or () if not k.startswith(H_PREFIX)]
            origin = f"{record.topic}/{record.partition}/{record.offset}".encode()
            fut = await producer.send(
                source, record.value, key=record.key, headers=[*original, (REPLAY_HEADER, origin)]
            )
            pending.append((reason, fut))
        for reason, fut in pending:
            await fut  # acknowledged by the broker before it is counted
            result.replayed[reason] += 1
    finally:
        if producer is not None:
            await producer.stop()
    return result


def cmd_dead_letters(args: argparse.Namespace) -> int:
    import os

    settings = load_settings(os.environ)
    since_ms = _time_ms(args.since, "--since")
    until_ms = _time_ms(args.until, "--until")
    replay = args.action == "replay"
    if replay and not args.reason and not args.all:
        raise EscalatorError("replay needs --reason REASON (repeatable) or --all")

    async def main() -> Scan:
        await check_connection(settings.kafka)
        return await scan(
            settings,
            reasons=set(args.reason),
            since_ms=since_ms,
            until_ms=until_ms,
            replay=replay and not args.dry_run,
        )

    result = asyncio.run(main())
    out = sys.stdout
    print(f"dead-letter topic {settings.topics.dead_letter}: {result.scanned} records", file=out)
    for reason, count in sorted(result.matched.items()):
        done = f", replayed {result.replayed[reason]}" if replay and not args.dry_run else ""
        print(f"  {reason}: {count}{done}", file=out)
    if result.unreplayable:
        print(f"  not replayed (source is not an input topic): {result.unreplayable}", file=out)
    if replay and args.dry_run:
        print("dry run: nothing was published", file=out)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dead-letters", help="count dead letters by reason, or replay them to their source topic"
    )
    p.add_argument("action", choices=["summary", "replay"])
    p.add_argument("--reason", action="append", default=[], help="only this reason; repeatable")
    p.add_argument("--all", action="store_true", help="replay every reason")
    p.add_argument("--since", default=None, help="failed at or after this ISO 8601 time")
    p.add_argument("--until", default=None, help="failed before this ISO 8601 time")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    p.set_defaults(func=cmd_dead_letters)
