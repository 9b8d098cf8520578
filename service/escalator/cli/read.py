"""``escalator read results|dead-letters``: what downstream teams look at first, as JSON lines.

``read results`` prints each result record as it is on the results topic (docs/CONTRACT.md),
one JSON object per line. ``read dead-letters`` prints one object per dead letter, built from
its ``x-escalator-*`` headers::

    {"id": "r-7", "key": "r-7", "reason": "invalid_json", "error": "value is not JSON: ...",
     "error_class": "InvalidRequest", "tier": "cheap", "failed_at": "2026-12-01T10:00:00Z",
     "source": "escalator.requests/3/1041", "dead_letter": "escalator.dead-letter/0/17",
     "value": "{\\"id\\": \\"r-7\\", ..."}

Both read without a consumer group (nothing is committed, nobody's offsets move), with
``read_committed`` isolation (results of aborted transactions never show). By default from
the start to the end offsets seen when the command began, then exit; ``--from end --follow``
is ``tail -f``; ``--follow`` waits for new records until Ctrl-C (or SIGTERM), exit 0.
``--id``/``--key`` (repeatable) select records; ``--since``/``--until`` select by time (the
record's timestamp; a dead letter's failure time); ``--limit`` stops after that many. A count
goes to stderr at the end; stdout holds only the records.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition

from escalator.cli._common import integer, parse_time, run_with_kafka, settings_from_env
from escalator.config import KafkaSettings
from escalator.contract.messages import DeadLetterInfo, iso_ms
from escalator.errors import EscalatorError

#: How long one fetch waits; in --follow mode, also how soon a signal is noticed.
POLL_MS = 500


@dataclass(frozen=True, slots=True)
class Window:
    start: str  # "start" or "end"
    follow: bool
    since_ms: int | None
    until_ms: int | None


async def records(
    kafka: KafkaSettings, topic: str, window: Window, stop: asyncio.Event
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` in ``window``: up to the end offsets seen at the start, or,
    with ``follow``, until ``stop`` is set. Group-less, read_committed."""
    from escalator.kafka.clients import make_consumer, stop_consumer, topic_partitions

    consumer = make_consumer(kafka, None, isolation_level="read_committed")
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in await topic_partitions(kafka, topic)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        if window.start == "end":
            await consumer.seek_to_end(*tps)
        elif window.since_ms is not None:
            found = await consumer.offsets_for_times({tp: window.since_ms for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else end[tp])
        else:
            await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while not stop.is_set() and (window.follow or remaining):
            batch = await consumer.getmany(timeout_ms=POLL_MS)
            for tp, got in batch.items():
                for record in got:
                    if window.follow or record.offset < end[tp]:
                        yield record
            if not window.follow:
                for tp in list(remaining):
                    # Positions, not offsets read: transaction markers take offsets too.
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
    finally:
        await stop_consumer(consumer, timeout_s=10)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _request_id(value: bytes | None) -> str | None:
    """The request id inside a value: a request's ``id``, an escalation's ``request.id``."""
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and isinstance(data.get("request"), dict):
        data = data["request"]
    found = data.get("id") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


def dead_letter_line(record: ConsumerRecord[bytes, bytes]) -> tuple[dict[str, Any], int]:
    """One dead letter as its JSON-lines object, and its failure time (epoch ms)."""
    info = DeadLetterInfo.from_headers(record.headers)
    failed_ms = record.timestamp if info.failed_at_ms is None else info.failed_at_ms
    source = None
    if info.source_topic is not None:
        source = f"{info.source_topic}/{info.source_partition}/{info.source_offset}"
    line: dict[str, Any] = {
        "id": _request_id(record.value) or _text(record.key),
        "key": _text(record.key),
        "reason": info.reason,
        "error": info.error_message,
        "error_class": info.error_class,
        "tier": info.tier,
        "failed_at": info.failed_at or iso_ms(failed_ms),
        "source": source,
        "dead_letter": f"{record.topic}/{record.partition}/{record.offset}",
    }
    if info.refusal_category is not None:
        line["refusal_category"] = info.refusal_category
    value = record.value
    try:
        line["value"] = None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        line["value_base64"] = base64.b64encode(value or b"").decode()
    return line, failed_ms


def cmd_read(args: argparse.Namespace) -> int:
    settings = settings_from_env()
    window = Window(
        start=args.start,
        follow=args.follow,
        since_ms=parse_time(args.since, "--since"),
        until_ms=parse_time(args.until, "--until"),
    )
    if window.start == "end" and not window.follow:
        print("read: --from end without --follow reads nothing (add --follow)", file=sys.stderr)
        return 0
    dead = args.what == "dead-letters"
    topic = settings.topics.dead_letter if dead else settings.topics.results
    ids, keys, reasons = set(args.id), set(args.key), set(args.reason)
    if reasons and not dead:
        raise EscalatorError("--reason selects dead letters; results have no reason")
    counts = {"printed": 0, "not_json": 0}
    out = sys.stdout.buffer

    def select(record: ConsumerRecord[bytes, bytes]) -> bytes | None:
        key = _text(record.key)
        if dead:
            line, when = dead_letter_line(record)
            rid = line["id"]
            if reasons and line["reason"] not in reasons:
                return None
            body = orjson.dumps(line)
        else:
            when = record.timestamp
            try:
                result = orjson.loads(record.value or b"")
            except orjson.JSONDecodeError:
                counts["not_json"] += 1
                return None
            rid = result.get("id") if isinstance(result, dict) else None
            body = orjson.dumps(result)
        if (ids and rid not in ids) or (keys and key not in keys):
            return None
        if window.since_ms is not None and when < window.since_ms:
            return None
        if window.until_ms is not None and when >= window.until_ms:
            return None
        return body

    async def work() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if window.follow:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        try:
            async for record in records(settings.kafka, topic, window, stop):
                body = select(record)
                if body is None:
                    continue
                out.write(body + b"\n")
                counts["printed"] += 1
                if window.follow:
                    out.flush()
                if args.limit is not None and counts["printed"] >= args.limit:
                    break
        finally:
            if window.follow:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    with contextlib.suppress(BrokenPipeError):  # `| head` closed the pipe: we are done
        run_with_kafka(settings.kafka, work)
        out.flush()
    skipped = f" ({counts['not_json']} not JSON, skipped)" if counts["not_json"] else ""
    what = "dead letter(s)" if dead else "result(s)"
    print(f"read {counts['printed']} {what} from {topic}{skipped}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    read = sub.add_parser(
        "read",
        help="print the results or the dead letters as JSON lines (no consumer group)",
        description="Print the results topic (each result as written, see docs/CONTRACT.md) or "
        "the dead-letter topic (id, key, reason, error, failure time, source offset and "
        "value) as JSON lines on stdout; a count on stderr. Reads without a consumer group.",
    )
    read.add_argument("what", choices=["results", "dead-letters"], help="which topic to read")
    read.add_argument(
        "--from",
        dest="start",
        choices=["start", "end"],
        default="start",
        help="where to begin: the oldest record (default) or only what arrives from now "
        "(with --follow)",
    )
    read.add_argument(
        "--follow", action="store_true", help="keep waiting for new records until Ctrl-C"
    )
    read.add_argument("--id", action="append", default=[], help="only this request id; repeatable")
    read.add_argument("--key", action="append", default=[], help="only this record key; repeatable")
    read.add_argument(
        "--reason", action="append", default=[], help="dead letters: only this reason; repeatable"
    )
    read.add_argument(
        "--since",
        default=None,
        help="at or after this time (ISO 8601, UTC if no zone, or epoch ms)",
    )
    read.add_argument("--until", default=None, help="before this time (same forms as --since)")
    read.add_argument("--limit", type=integer(1), default=None, help="stop after this many records")
    read.set_defaults(func=cmd_read)
