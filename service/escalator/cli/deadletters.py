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
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from escalator.cli._common import parse_time, settings_from_env
from escalator.config import Settings
from escalator.contract.messages import REPLAY_HEADER, DeadLetterInfo
from escalator.errors import EscalatorError
from escalator.kafka.clients import Outgoing, check_connection, produce_and_await, read_to_end


@dataclass
class Scan:
    scanned: int = 0
    matched: Counter[str] = field(default_factory=Counter)
    replayed: Counter[str] = field(default_factory=Counter)
    unreplayable: int = 0


async def scan(
    settings: Settings,
    *,
    reasons: set[str],
    since_ms: int | None,
    until_ms: int | None,
    replay: bool,
) -> Scan:
    result = Scan()
    sent: list[str] = []  # the reason of each record handed to the producer, in order

    async def replays() -> AsyncIterator[Outgoing]:
        """The scan itself: counts every dead letter; with ``replay``, yields those to send."""
        dead_letters = read_to_end(
            settings.kafka,
            settings.topics.dead_letter,
            client_id=settings.kafka.client_id + "-dead-letters",
            isolation_level="read_committed",
        )
        async for record in dead_letters:
            result.scanned += 1
            info = DeadLetterInfo.from_headers(record.headers)
            reason = info.reason
            failed_at = record.timestamp if info.failed_at_ms is None else info.failed_at_ms
            if reasons and reason not in reasons:
                continue
            if since_ms is not None and failed_at < since_ms:
                continue
            if until_ms is not None and failed_at >= until_ms:
                continue
            result.matched[reason] += 1
            if not replay:
                continue
            source = info.source_topic
            if source is None or source not in (
                settings.topics.requests,
                settings.topics.escalations,
            ):
                result.unreplayable += 1
                continue
            origin = f"{record.topic}/{record.partition}/{record.offset}".encode()
            sent.append(reason)
            yield source, record.key, record.value, [*info.original, (REPLAY_HEADER, origin)]

    if replay:
        # Sends while it scans; returns once the broker acknowledged every record (acks=all),
        # and raises otherwise: a replay is counted only after its acknowledgement.
        await produce_and_await(settings.kafka, replays())
        result.replayed.update(sent)
    else:
        async for _ in replays():
            pass  # without replay nothing is yielded: the scan only counts
    return result


def cmd_dead_letters(args: argparse.Namespace) -> int:
    settings = settings_from_env()
    since_ms = parse_time(args.since, "--since")
    until_ms = parse_time(args.until, "--until")
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
    print(f"dead-letter topic {settings.topics.dead_letter}: {result.scanned} records")
    for reason, count in sorted(result.matched.items()):
        done = f", replayed {result.replayed[reason]}" if replay and not args.dry_run else ""
        print(f"  {reason}: {count}{done}")
    if result.unreplayable:
        print(f"  not replayed (source is not an input topic): {result.unreplayable}")
    if replay and args.dry_run:
        print("dry run: nothing was published")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dead-letters", help="count dead letters by reason, or replay them to their source topic"
    )
    p.add_argument("action", choices=["summary", "replay"])
    p.add_argument("--reason", action="append", default=[], help="only this reason; repeatable")
    p.add_argument("--all", action="store_true", help="replay every reason")
    p.add_argument(
        "--since",
        default=None,
        help="failed at or after this time (ISO 8601, UTC if no zone, or epoch ms)",
    )
    p.add_argument("--until", default=None, help="failed before this time (same forms as --since)")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    p.set_defaults(func=cmd_dead_letters)
