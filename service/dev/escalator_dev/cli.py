"""The development commands, registered on ``escalator`` when this package is installed.

    kafka start|stop|status   a real local Apache Kafka (KRaft) built from Maven artifacts
    sim                       the Messages-API emulator
    demo                      the whole round trip on embedded defaults

The runtime CLI finds :func:`register` through the ``escalator.commands`` entry point; it never
imports this package by name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from escalator.cli._common import check_port_free, existing_file, fraction, integer, number
from escalator.errors import EscalatorError
from escalator_dev.kafka_local import DEFAULT_KAFKA_VERSION as DEFAULT_KAFKA_VERSION_TEXT

if TYPE_CHECKING:
    from escalator_dev.emulator.batches import BatchSettings


def kafka_version(text: str) -> str:
    """An argparse type: an Apache Kafka release number (``4.1.1``)."""
    if not re.fullmatch(r"\d+\.\d+\.\d+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kafka version like 4.1.1")
    return text


def _default_kafka_dir() -> Path:
    from escalator_dev.kafka_local import cache_root

    return cache_root() / "run" / "local"


def cmd_kafka(args: argparse.Namespace) -> int:
    from escalator_dev.kafka_local import (
        DEFAULT_KAFKA_VERSION,
        KafkaLaunchError,
        LocalKafkaCluster,
        kafka_version_from_log,
    )

    workdir: Path = args.dir
    if args.kafka_version is None:
        args.kafka_version = DEFAULT_KAFKA_VERSION
    if args.action == "start":
        existing = None
        if not args.fresh:
            with contextlib.suppress(KafkaLaunchError):
                existing = LocalKafkaCluster.load(workdir)
        if existing is not None:
            if existing.alive_nodes():
                print(f"already running: KAFKA_BOOTSTRAP_SERVERS={existing.bootstrap_servers}")
                return 0
            recorded = len(existing.spec.nodes)
            if args.nodes is not None and args.nodes != recorded:
                raise KafkaLaunchError(
                    f"{workdir} holds a {recorded}-node cluster; --nodes {args.nodes} needs "
                    "--fresh (which deletes its data) or another --dir"
                )
            # Same data, same ports: what was produced before `kafka stop` is still there.
            existing.restart(timeout_s=args.timeout)
            cluster, how = existing, "started again (data kept)"
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            cluster = LocalKafkaCluster(workdir, args.nodes or 1, version=args.kafka_version)
            cluster.start(timeout_s=args.timeout)
            how = "up (new cluster)"
        version = kafka_version_from_log(cluster.server_log())
        print(f"Apache Kafka {version} {how} with {len(cluster.spec.nodes)} node(s) in {workdir}")
        print(f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}")
        return 0
    cluster = LocalKafkaCluster.load(workdir)
    if args.action == "stop":
        cluster.stop()
        print("stopped")
        return 0
    alive = cluster.alive_nodes()
    total = len(cluster.spec.nodes)
    print(f"nodes alive: {len(alive)}/{total} {alive}")
    print(f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}")
    if len(alive) != total:
        return 1
    try:
        cluster.wait_ready(timeout_s=10)
    except KafkaLaunchError as exc:
        print(f"not ready: {exc}")
        return 1
    print("ready")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from escalator_dev.emulator.server import SimConfig, parse_lexicon, serve

    check_port_free(args.host, args.port, "--port", "--host")
    lexicon = None
    if args.refusal_lexicon is not None:
        try:
            lexicon = parse_lexicon(orjson.loads(args.refusal_lexicon.read_bytes()))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise EscalatorError(f"--refusal-lexicon {args.refusal_lexicon}: {exc}") from exc
    config = SimConfig(
        latency=args.latency,
        faults=dict(args.fault),
        retry_after_s=args.retry_after_s,
        seed=args.seed,
        api_key=args.api_key,
        retired=set(args.retire),
        limits=dict(args.rate_limit),
        default_limits=args.tier,
        workspace_limits=dict(args.workspace_limit),
        enum_case_rate=args.enum_case_rate,
        refusals=not args.no_refusals,
        refusal_lexicon=lexicon,
        batch=_batch_settings(args),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, args.host, args.port))
    return 0


def _batch_settings(args: argparse.Namespace) -> BatchSettings:
    """The Batches API's settings: the flags given, the emulator's defaults for the rest."""
    from escalator_dev.emulator.batches import BatchSettings

    batch = BatchSettings(faults=dict(args.batch_fault))
    if args.batch_latency is not None:
        batch.latency_s = args.batch_latency
    if args.batch_limits is not None:
        batch.rpm, batch.queue = args.batch_limits
    return batch


def _model_limits(spec: str) -> tuple[str, tuple[int, int, int]]:
    from escalator_dev.emulator.server import parse_limits

    model, sep, value = spec.partition("=")
    if not sep or not model:
        raise ValueError(f"{spec!r} is not MODEL=RPM:ITPM:OTPM")
    return model, parse_limits(value)


def _emulator_type(name: str) -> Callable[[str], Any]:
    """An argparse type from one of the emulator's parsers (imported when used: the emulator
    is not loaded for other commands); its ValueError becomes argparse's one-line error."""

    def parse(text: str) -> Any:
        from escalator_dev.emulator import server

        try:
            if name == "rate_limit":
                return _model_limits(text)
            if name == "latency":
                return server.Latency.parse(text)
            return getattr(server, f"parse_{name}")(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kafka = sub.add_parser(
        "kafka",
        help="run a local Apache Kafka from Maven artifacts",
        description="A local Apache Kafka (KRaft) on loopback. `start` on a directory that "
        "holds a stopped cluster starts it again with its data and its ports; --fresh starts "
        "a new one (new ports, no data).",
    )
    kafka.add_argument(
        "action", choices=["start", "stop", "status"], help="start, stop, or show the cluster"
    )
    kafka.add_argument(
        "--nodes",
        type=integer(1, 9),
        default=None,
        help="cluster size, for a new cluster (default 1)",
    )
    kafka.add_argument(
        "--dir",
        type=Path,
        default=_default_kafka_dir(),
        help="state directory: the cluster's data, logs, ports and process ids (default "
        "%(default)s)",
    )
    kafka.add_argument(
        "--fresh",
        action="store_true",
        help="start: delete what --dir holds and start a new cluster",
    )
    kafka.add_argument(
        "--kafka-version",
        type=kafka_version,
        default=None,
        help=f"Apache Kafka version to fetch (default {DEFAULT_KAFKA_VERSION_TEXT})",
    )
    kafka.add_argument(
        "--timeout",
        type=number(1.0, 3600.0),
        default=90.0,
        help="seconds to wait for ready (default 90)",
    )
    kafka.set_defaults(func=cmd_kafka)

    sim = sub.add_parser(
        "sim",
        help="run the Messages-API simulator",
        description="The emulator of the Messages and Models APIs (docs/SIMULATOR.md). Point "
        "ANTHROPIC_BASE_URL at the URL it prints; every answer it gives is simulated.",
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument(
        "--port", type=integer(0, 65535), default=8765, help="0 picks a free port (default 8765)"
    )
    sim.add_argument(
        "--latency",
        type=_emulator_type("latency"),
        default="0",
        help="per answer: 0, fixed:MS or uniform:LO:HI (milliseconds)",
    )
    sim.add_argument(
        "--fault",
        type=_emulator_type("fault"),
        action="append",
        default=[],
        help="KIND[:RATE], KIND in 429, 529, 500, hang, bad-schema, bad-label, refuse, "
        "spend-limit, billing, spend-cap, contract-cap, ramp, auth, permission, schema-rejected; "
        "repeatable",
    )
    sim.add_argument(
        "--retry-after-s",
        type=number(0.0, 3600.0),
        default=1.0,
        help="retry-after of the 429s and 529s the faults make (default 1)",
    )
    sim.add_argument(
        "--seed", type=integer(0), default=0, help="seed of the faults and answers (default 0)"
    )
    sim.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    sim.add_argument(
        "--tier",
        type=_emulator_type("limits"),
        default="custom",
        help="rate limits of every model: start, build, scale (documented tiers), custom "
        "(default, 100,000 RPM), or RPM:ITPM:OTPM",
    )
    sim.add_argument(
        "--rate-limit",
        type=_emulator_type("rate_limit"),
        action="append",
        default=[],
        help="MODEL=RPM:ITPM:OTPM for the rate-limit group of MODEL (or GROUP=..., e.g. "
        "haiku-5); repeatable",
    )
    sim.add_argument(
        "--workspace-limit",
        type=_emulator_type("rate_limit"),
        action="append",
        default=[],
        help="MODEL=RPM:ITPM:OTPM: the workspace's own limit for that group, beside the "
        "organisation's; its input limit counts cache reads; repeatable",
    )
    sim.add_argument("--retire", action="append", default=[], help="treat MODEL as retired")
    sim.add_argument(
        "--enum-case-rate",
        type=fraction,
        default=0.03,
        help="fraction of answers whose label comes back in another capitalization",
    )
    sim.add_argument(
        "--no-refusals", action="store_true", help="turn the safety-classifier refusals off"
    )
    sim.add_argument(
        "--refusal-lexicon",
        type=existing_file,
        default=None,
        help="JSON file {word: category} replacing the built-in refusal lexicon",
    )
    sim.add_argument(
        "--batch-latency",
        type=number(0.0, 30 * 86400.0),
        default=None,
        metavar="SECONDS",
        help="Message Batches: seconds from creation until a batch's last request is "
        "processed (default 10; past 86400 the rest expire)",
    )
    sim.add_argument(
        "--batch-fault",
        type=_emulator_type("batch_fault"),
        action="append",
        default=[],
        help="KIND[:RATE], KIND in errored, expired: that fraction of batch requests is "
        "errored (api_error) or never processed (expired at 24 h); repeatable",
    )
    sim.add_argument(
        "--batch-limits",
        type=_emulator_type("batch_limits"),
        default=None,
        metavar="RPM:QUEUE",
        help="Message Batches rate limits: requests per minute to the batch endpoints, batch "
        "requests in the processing queue (default 100000:10000000)",
    )
    sim.set_defaults(func=cmd_sim)

    from escalator_dev.demo import register as register_demo

    register_demo(sub)
