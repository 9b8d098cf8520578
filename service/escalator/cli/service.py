"""Service commands of the CLI: ``run``, ``topics create``, ``produce``.

Each reads the environment once through :func:`escalator.config.load_settings`; a bad value
ends as one line naming the variable and exit code 2. Each connects to the broker once before
its work (``check_connection``), so an unreachable one is named in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from escalator.cli._common import (
    check_port_free,
    integer,
    port_error,
    run_with_kafka,
    settings_from_env,
    topic_name,
)
from escalator.errors import ConfigError, EscalatorError, InvalidRequest

if TYPE_CHECKING:
    from escalator.config import Settings


def cmd_run(args: argparse.Namespace) -> int:
    from escalator.app import build_service, load_parts
    from escalator.kafka.clients import check_connection
    from escalator.observability import logs
    from escalator.tiers.table import tiers_to_run

    # Everything that can be checked without a network, before logging or any socket: the
    # settings, the files they name, the metrics port.
    settings = settings_from_env(role=args.tier)
    tiers = tiers_to_run(args.tier, settings)
    load_parts(settings, tiers)
    check_port_free(
        settings.metrics_host,
        settings.metrics_port,
        "ESCALATOR_METRICS_PORT",
        "ESCALATOR_METRICS_HOST",
    )
    logs.configure(settings.log_level)

    async def main() -> None:
        # aiokafka reports every failed bootstrap as "Unable to bootstrap from [...]": connect
        # once first, so that a wrong password or a missing CA is named before anything starts.
        await check_connection(settings.kafka)
        # aiokafka clients must be created inside the running loop.
        await build_service(settings, tiers).run()

    try:
        asyncio.run(main())
    except OSError as exc:
        # The metrics port, taken between the check above and the listener's start.
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise ConfigError(
                port_error(
                    "ESCALATOR_METRICS_PORT", settings.metrics_host, settings.metrics_port, exc
                )
            ) from exc
        raise
    return 0


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The topics whose configuration is not the broker's default, and that configuration
    (``topics create`` sets it; ``deploy/k8s/base/topics.yaml`` says the same, tested)."""
    from escalator.config import HANDOFF_RETENTION_MS

    t = settings.topics
    return {
        # The parked topic keeps what it holds until replayed (ESCALATOR_PARKED_RETENTION_MS).
        t.parked: {"retention.ms": str(settings.parking.parked_retention_ms)},
        # The lane's ledger outlives a batch's 24 hours; its state is one record per batch.
        t.handoff: {"retention.ms": str(HANDOFF_RETENTION_MS)},
        t.lane_state: {"cleanup.policy": "compact"},
        t.tier0_state: {"cleanup.policy": "compact"},
    }


def cmd_topics(args: argparse.Namespace) -> int:
    from escalator.kafka.clients import create_topics

    settings = settings_from_env()
    partitions = args.partitions or settings.topic_partitions
    replication = args.replication or settings.topic_replication
    names = settings.topics.all()
    configs = topic_configs(settings)
    created = run_with_kafka(
        settings.kafka,
        lambda: create_topics(settings.kafka, names, partitions, replication, configs),
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


#: A failed ``produce`` names at most this many bad lines in its one line.
BAD_LINES_SHOWN = 3


def cmd_produce(args: argparse.Namespace) -> int:
    from escalator.contract.messages import parse_request
    from escalator.kafka.clients import missing_topics, produce_and_await

    settings = settings_from_env()
    records: list[tuple[bytes, bytes]] = []
    bad: list[str] = []
    for number, line in _lines(args.file):
        if args.raw:
            records.append((line, line))
            continue
        try:
            request = parse_request(line, settings.pipeline.max_text_chars)
        except InvalidRequest as exc:
            bad.append(f"{args.file}:{number}: {exc.reason}: {exc}")
            continue
        records.append((request.id.encode(), line))
    if bad and not args.skip_invalid:
        shown = "; ".join(bad[:BAD_LINES_SHOWN])
        more = f"; and {len(bad) - BAD_LINES_SHOWN} more" if len(bad) > BAD_LINES_SHOWN else ""
        raise EscalatorError(
            f"{len(bad)} invalid line(s), nothing was produced: {shown}{more} (--skip-invalid "
            "publishes the valid ones and lists every invalid one; --raw publishes every line "
            "unchecked)"
        )
    for problem in bad:  # --skip-invalid: each one named, on stderr
        print(f"skipped {problem}", file=sys.stderr)
    topic = args.topic or settings.topics.requests

    async def publish() -> None:
        # aiokafka would wait a minute for a topic that does not exist, then time out.
        if await missing_topics(settings.kafka, [topic]):
            raise EscalatorError(
                f"topic {topic!r} does not exist: create it (escalator topics create), or name "
                "another with --topic"
            )
        await produce_and_await(settings.kafka, ((topic, k, v, []) for k, v in records))

    if records:
        run_with_kafka(settings.kafka, publish)
    skipped = f"; skipped {len(bad)} invalid line(s)" if bad else ""
    print(f"produced {len(records)} record(s) to {topic}{skipped}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run one tier (or all) of the service")
    run.add_argument(
        "--tier",
        choices=["cheap", "strong", "lane", "all"],
        required=True,
        help="cheap: reads the requests topic; strong: reads the escalations topic; lane: the "
        "batch lane's worker (reads the hand-off topic; needs ESCALATOR_BATCH_LANE=on); all: "
        "cheap and strong, and the lane when it is on, in one process (small set-ups). "
        "Default metrics ports: 9464 (cheap, all), 9465 (strong), 9467 (lane)",
    )
    run.set_defaults(func=cmd_run)

    topics = sub.add_parser("topics", help="create the service's topics (idempotent)")
    topics.add_argument("action", choices=["create"], help="create the topics that are missing")
    topics.add_argument(
        "--partitions",
        type=integer(1, 100_000),
        default=None,
        help="partitions per new topic (default: ESCALATOR_TOPIC_PARTITIONS)",
    )
    topics.add_argument(
        "--replication",
        type=integer(1, 32_767),
        default=None,
        help="replication factor of new topics (default: ESCALATOR_TOPIC_REPLICATION)",
    )
    topics.set_defaults(func=cmd_topics)

    produce = sub.add_parser(
        "produce",
        help="publish requests from a JSON-lines file or -",
        description='Publish one request per line ({"id", "text", "metadata"?}), keyed '
        "by id, each acknowledged by the broker. Every line is checked first; with an invalid "
        "one nothing is published unless --skip-invalid.",
    )
    produce.add_argument("file", help="FILE.jsonl, or - for stdin")
    produce.add_argument(
        "--topic", type=topic_name, default=None, help="default: the requests topic"
    )
    checks = produce.add_mutually_exclusive_group()
    checks.add_argument(
        "--skip-invalid",
        action="store_true",
        help="publish the valid lines and name every invalid one on stderr",
    )
    checks.add_argument(
        "--raw", action="store_true", help="publish every line unchecked, keyed by itself"
    )
    produce.set_defaults(func=cmd_produce)
