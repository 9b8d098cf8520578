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

Replay cannot make things worse: a record dead-lettered for its own bytes (not JSON, not
UTF-8, a missing field: ``contract.messages.MALFORMED_REASONS``) would fail the same way
again, so ``--reason`` refuses those reasons and ``--all`` leaves them out, unless
``--include-malformed``. ``summary`` gives, per reason, the count, the first and last failure
time and the last error message; ``escalator read dead-letters`` lists each one.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from escalator.cli._common import parse_time, settings_from_env
from escalator.config import Settings
from escalator.contract.messages import MALFORMED_REASONS, REPLAY_HEADER, DeadLetterInfo, iso_ms
from escalator.errors import EscalatorError
from escalator.kafka.clients import Outgoing, check_connection, produce_and_await, read_to_end


@dataclass
class Scan:
    scanned: int = 0
    matched: Counter[str] = field(default_factory=Counter)
    replayed: Counter[str] = field(default_factory=Counter)
    unreplayable: int = 0
    #: Left out of a replay: the record itself is malformed (MALFORMED_REASONS).
    malformed: Counter[str] = field(default_factory=Counter)
    #: Per reason: first and last failure time (epoch ms), the last error message.
    first_ms: dict[str, int] = field(default_factory=dict)
    last_ms: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)

    def saw(self, reason: str, failed_at: int, error: str | None) -> None:
        self.matched[reason] += 1
        self.first_ms[reason] = min(failed_at, self.first_ms.get(reason, failed_at))
        if failed_at >= self.last_ms.get(reason, failed_at):
            self.last_ms[reason] = failed_at
            if error:
                self.last_error[reason] = error


async def scan(
    settings: Settings,
    *,
    reasons: set[str],
    since_ms: int | None,
    until_ms: int | None,
    replay: bool,
    include_malformed: bool = False,
    publish: bool = True,
) -> Scan:
    """Count the dead letters; with ``replay``, choose those to send back, and (``publish``)
    send them. A dry run is ``replay`` without ``publish``."""
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
            result.saw(reason, failed_at, info.error_message)
            if not replay:
                continue
            if reason in MALFORMED_REASONS and not include_malformed:
                result.malformed[reason] += 1
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

    if replay and publish:
        # Sends while it scans; returns once the broker acknowledged every record (acks=all),
        # and raises otherwise: a replay is counted only after its acknowledgement.
        await produce_and_await(settings.kafka, replays())
        result.replayed.update(sent)
    else:
        async for _ in replays():
            pass  # a summary or a dry run: the scan only counts
    return result


def cmd_dead_letters(args: argparse.Namespace) -> int:
    settings = settings_from_env()
    since_ms = parse_time(args.since, "--since")
    until_ms = parse_time(args.until, "--until")
    replay = args.action == "replay"
    if replay and not args.reason and not args.all:
        raise EscalatorError("replay needs --reason REASON (repeatable) or --all")
    malformed = sorted(set(args.reason) & MALFORMED_REASONS)
    if replay and malformed and not args.include_malformed:
        raise EscalatorError(
            f"replay --reason {', '.join(malformed)}: these records are malformed themselves; "
            "replayed, the same bytes are dead-lettered again (fix them at the producer; "
            "--include-malformed replays them anyway)"
        )

    async def main() -> Scan:
        await check_connection(settings.kafka)
        return await scan(
            settings,
            reasons=set(args.reason),
            since_ms=since_ms,
            until_ms=until_ms,
            replay=replay,
            include_malformed=args.include_malformed,
            publish=not args.dry_run,
        )

    result = asyncio.run(main())
    print(f"dead-letter topic {settings.topics.dead_letter}: {result.scanned} records")
    for reason, count in sorted(result.matched.items()):
        done = f", replayed {result.replayed[reason]}" if replay and not args.dry_run else ""
        first = iso_ms(result.first_ms[reason])
        last = iso_ms(result.last_ms[reason])
        error = result.last_error.get(reason)
        said = f"; last error: {error[:160]}" if error else ""
        print(f"  {reason}: {count}{done} (failed {first} .. {last}{said})")
    if result.malformed:
        counts = ", ".join(f"{r} {n}" for r, n in sorted(result.malformed.items()))
        print(
            f"  not replayed (malformed records; replaying cannot fix them; "
            f"--include-malformed to force): {counts}"
        )
    if result.unreplayable:
        print(f"  not replayed (source is not an input topic): {result.unreplayable}")
    if replay and args.dry_run:
        print("dry run: nothing was published")
    if result.matched:
        print("each one (id, time, error): escalator read dead-letters [--reason REASON]")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dead-letters", help="count dead letters by reason, or replay them to their source topic"
    )
    p.add_argument(
        "action",
        choices=["summary", "replay"],
        help="summary: count by reason; replay: send chosen ones back to their source topic",
    )
    p.add_argument("--reason", action="append", default=[], help="only this reason; repeatable")
    p.add_argument("--all", action="store_true", help="replay every reason")
    p.add_argument(
        "--since",
        default=None,
        help="failed at or after this time (ISO 8601, UTC if no zone, or epoch ms)",
    )
    p.add_argument("--until", default=None, help="failed before this time (same forms as --since)")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    p.add_argument(
        "--include-malformed",
        action="store_true",
        help="replay records dead-lettered for their own bytes too (not JSON, not UTF-8, a "
        "missing field...), which fail again unless something upstream changed",
    )
    p.set_defaults(func=cmd_dead_letters)
