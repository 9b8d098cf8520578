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
import shutil
from pathlib import Path

import orjson

from escalator.errors import EscalatorError


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
        with contextlib.suppress(KafkaLaunchError):
            existing = LocalKafkaCluster.load(workdir)
            if existing.alive_nodes():
                print(f"already running: KAFKA_BOOTSTRAP_SERVERS={existing.bootstrap_servers}")
                return 0
        shutil.rmtree(workdir, ignore_errors=True)
        cluster = LocalKafkaCluster(workdir, args.nodes, version=args.kafka_version)
        cluster.start(timeout_s=args.timeout)
        version = kafka_version_from_log(cluster.server_log())
        print(f"Apache Kafka {version} up with {args.nodes} node(s) in {workdir}")
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
    from escalator_dev.emulator.server import (
        Latency,
        SimConfig,
        parse_fault,
        parse_lexicon,
        parse_limits,
        serve,
    )

    try:
        lexicon = None
        if args.refusal_lexicon is not None:
            lexicon = parse_lexicon(orjson.loads(Path(args.refusal_lexicon).read_bytes()))
        limits = dict(_model_limits(spec) for spec in args.rate_limit)
        workspace = dict(_model_limits(spec) for spec in args.workspace_limit)
        config = SimConfig(
            latency=Latency.parse(args.latency),
            faults=dict(parse_fault(f) for f in args.fault),
            retry_after_s=args.retry_after_s,
            seed=args.seed,
            api_key=args.api_key,
            retired=set(args.retire),
            limits=limits,
            default_limits=parse_limits(args.tier),
            workspace_limits=workspace,
            enum_case_rate=args.enum_case_rate,
            refusals=not args.no_refusals,
            refusal_lexicon=lexicon,
        )
    except (ValueError, OSError, orjson.JSONDecodeError) as exc:
        raise EscalatorError(str(exc)) from exc
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, args.host, args.port))
    return 0


def _model_limits(spec: str) -> tuple[str, tuple[int, int, int]]:
    from escalator_dev.emulator.server import parse_limits

    model, sep, value = spec.partition("=")
    if not sep:
        raise ValueError(f"--rate-limit wants MODEL=RPM:ITPM:OTPM, got {spec!r}")
    return model, parse_limits(value)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kafka = sub.add_parser("kafka", help="run a local Apache Kafka from Maven artifacts")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.add_argument("--nodes", type=int, default=1, help="cluster size (default 1)")
    kafka.add_argument("--dir", type=Path, default=_default_kafka_dir(), help="state directory")
    kafka.add_argument("--kafka-version", default=None, help="Apache Kafka version to fetch")
    kafka.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for ready")
    kafka.set_defaults(func=cmd_kafka)

    sim = sub.add_parser("sim", help="run the Messages-API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    sim.add_argument("--latency", default="0", help="0, fixed:MS or uniform:LO:HI")
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        help="KIND[:RATE], KIND in 429, 529, 500, hang, bad-schema, bad-label, refuse, "
        "spend-limit, billing, spend-cap, contract-cap, ramp, auth, permission, schema-rejected; "
        "repeatable",
    )
    sim.add_argument("--retry-after-s", type=float, default=1.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    sim.add_argument(
        "--tier",
        default="custom",
        help="rate limits of every model: start, build, scale (documented tiers), custom "
        "(default, 100,000 RPM), or RPM:ITPM:OTPM",
    )
    sim.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        help="MODEL=RPM:ITPM:OTPM for the rate-limit group of MODEL (or GROUP=..., e.g. "
        "haiku-5); repeatable",
    )
    sim.add_argument(
        "--workspace-limit",
        action="append",
        default=[],
        help="MODEL=RPM:ITPM:OTPM: the workspace's own limit for that group, beside the "
        "organisation's; its input limit counts cache reads; repeatable",
    )
    sim.add_argument("--retire", action="append", default=[], help="treat MODEL as retired")
    sim.add_argument(
        "--enum-case-rate",
        type=float,
        default=0.03,
        help="fraction of answers whose label comes back in another capitalization",
    )
    sim.add_argument(
        "--no-refusals", action="store_true", help="turn the safety-classifier refusals off"
    )
    sim.add_argument(
        "--refusal-lexicon",
        default=None,
        help="JSON file {word: category} replacing the built-in refusal lexicon",
    )
    sim.set_defaults(func=cmd_sim)

    from escalator_dev.demo import register as register_demo

    register_demo(sub)
