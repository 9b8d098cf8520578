"""Service commands of the CLI: ``run``, ``topics create``, ``produce``.

Each reads the environment once through :func:`escalator.config.load_settings`; a bad value
ends as one line naming the variable and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from escalator.cli._common import settings_from_env
from escalator.errors import EscalatorError, InvalidRequest


def cmd_run(args: argparse.Namespace) -> int:
    from escalator.app import TIERS, build_service
    from escalator.kafka.clients import check_connection
    from escalator.observability import logs

    settings = settings_from_env()
    logs.configure(settings.log_level)
    tiers = list(TIERS) if args.tier == "all" else [args.tier]

    async def main() -> None:
        # aiokafka reports every failed bootstrap as "Unable to bootstrap from [...]": connect
        # once first, so that a wrong password or a missing CA is named before anything starts.
        await check_connection(settings.kafka)
        # aiokafka clients must be created inside the running loop.
        await build_service(settings, tiers).run()

    asyncio.run(main())
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from escalator.kafka.clients import create_topics

    settings = settings_from_env()
    partitions = args.partitions or settings.topic_partitions
    replication = args.replication or settings.topic_replication
    names = settings.topics.all()
    # The parked topic keeps what it holds until replayed (ESCALATOR_PARKED_RETENTION_MS).
    parked = {"retention.ms": str(settings.parking.parked_retention_ms)}
    created = asyncio.run(
        create_topics(
            settings.kafka, names, partitions, replication, {settings.topics.parked: parked}
        )
    )
    for name in names:
        print(f"{'created' if name in created else 'exists '} {name}")
    return 0


def _lines(source: str) -> Iterator[tuple[int, bytes]]:
    stream: IO[bytes]
    if source == "-":
        stream = sys.stdin.buffer
    else:
        path = Path(source)
        if not path.is_file():
            raise EscalatorError(f"{source}: no such file")
        stream = path.open("rb")
    with stream:
        for number, line in enumerate(stream, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield number, line


def cmd_produce(args: argparse.Namespace) -> int:
    from escalator.contract.messages import parse_request
    from escalator.kafka.clients import produce_and_await

    settings = settings_from_env()
    records: list[tuple[bytes, bytes]] = []
    for number, line in _lines(args.file):
        if args.raw:
            records.append((line, line))
            continue
        try:
            request = parse_request(line, settings.pipeline.max_text_chars)
        except InvalidRequest as exc:
            raise EscalatorError(
                f"{args.file}:{number}: {exc.reason}: {exc} (nothing was produced; "
                "use --raw to publish lines unchecked)"
            ) from exc
        records.append((request.id.encode(), line))
    topic = args.topic or settings.topics.requests
    asyncio.run(produce_and_await(settings.kafka, ((topic, k, v, []) for k, v in records)))
    print(f"produced {len(records)} record(s)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run one tier (or both) of the service")
    run.add_argument("--tier", choices=["cheap", "strong", "all"], required=True)
    run.set_defaults(func=cmd_run)

    topics = sub.add_parser("topics", help="manage the service's topics")
    topics.add_argument("action", choices=["create"])
    topics.add_argument("--partitions", type=int, default=None)
    topics.add_argument("--replication", type=int, default=None)
    topics.set_defaults(func=cmd_topics)

    produce = sub.add_parser("produce", help="publish requests from a JSON-lines file or -")
    produce.add_argument("file", help="FILE.jsonl, or - for stdin")
    produce.add_argument("--topic", default=None, help="default: the requests topic")
    produce.add_argument("--raw", action="store_true", help="publish lines without checking")
    produce.set_defaults(func=cmd_produce)
