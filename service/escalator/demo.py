"""``escalator demo``: the whole round trip on embedded defaults.

It uses ``KAFKA_BOOTSTRAP_SERVERS`` or starts a local broker; the real API when
``ANTHROPIC_API_KEY`` is set, else the simulator in its own process. It creates fresh topics,
runs both tiers in this process, publishes a sample of real human-labelled texts (PyRIT's harm
evaluations, see datasets.py), shows live progress, and ends with a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import orjson

from escalator import datasets, sim
from escalator.config import Settings, load_settings
from escalator.errors import EscalatorError
from escalator.kafka_local import LocalKafkaCluster, cache_root, kafka_version_from_log


@dataclass
class Tally:
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    latency_ms: list[float] = field(default_factory=list)


def _environment(stack: ExitStack, args: argparse.Namespace) -> tuple[dict[str, str], str, bool]:
    env = dict(os.environ)
    if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        print("starting a local Apache Kafka (first run fetches it with Maven)...", flush=True)
        cluster = LocalKafkaCluster(cache_root() / "run" / f"demo-{os.getpid()}", nodes=1)
        cluster.start()
        stack.callback(cluster.stop)
        env["KAFKA_BOOTSTRAP_SERVERS"] = cluster.bootstrap_servers
        broker = f"local Apache Kafka {kafka_version_from_log(cluster.server_log())}"
    else:
        broker = f"Kafka at {env['KAFKA_BOOTSTRAP_SERVERS']}"
    simulated = not env.get("ANTHROPIC_API_KEY")
    if simulated:
        proc, url = sim.spawn()
        stack.callback(sim.terminate, proc)
        env["ANTHROPIC_BASE_URL"] = url
    suffix = f"demo-{uuid.uuid4().hex[:6]}"
    for var, name in (
        ("ESCALATOR_REQUESTS_TOPIC", "requests"),
        ("ESCALATOR_ESCALATIONS_TOPIC", "escalations"),
        ("ESCALATOR_RESULTS_TOPIC", "results"),
        ("ESCALATOR_DEAD_LETTER_TOPIC", "dead-letter"),
        ("ESCALATOR_DECISIONS_TOPIC", "decisions"),
    ):
        env[var] = f"escalator.{suffix}.{name}"
    env["ESCALATOR_CHEAP_GROUP"] = f"escalator-cheap-{suffix}"
    env["ESCALATOR_STRONG_GROUP"] = f"escalator-strong-{suffix}"
    env.setdefault("ESCALATOR_METRICS_PORT", "0")
    env.setdefault("ESCALATOR_LOG_LEVEL", "WARNING")
    return env, broker, simulated


def cmd_demo(args: argparse.Namespace) -> int:
    wheel = datasets.fetch_pyrit_wheel()
    samples = datasets.sample(datasets.load_harm_samples(wheel), args.count)
    with ExitStack() as stack:
        env, broker, simulated = _environment(stack, args)
        settings = load_settings(env)
        from escalator import logs

        logs.configure(settings.log_level)
        # A fresh broker answers "coordinator not available" for a moment; aiokafka retries
        # and logs each at ERROR. The demo's own summary reports anything that matters.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        tag = " (SIMULATED models)" if simulated else ""
        print(
            f"broker: {broker}; models: {settings.model.cheap_model} -> "
            f"{settings.model.strong_model}{tag}"
        )
        print(
            f"texts: {len(samples)} human-labelled responses from pyrit {datasets.PYRIT_VERSION} "
            "(MIT licence, Microsoft; scorer_evals/harm)"
        )
        tally, elapsed = asyncio.run(_round_trip(settings, samples))
        _summary(settings, samples, tally, elapsed, simulated)
    return 0


async def _round_trip(settings: Settings, samples: list[datasets.Sample]) -> tuple[Tally, float]:
    from escalator.app import build_service
    from escalator.commands import all_topics
    from escalator.kafka_io import create_topics, make_consumer, make_producer

    await create_topics(settings.kafka, all_topics(settings), settings.topic_partitions, 1)
    service = build_service(settings, ["cheap", "strong"])
    run = asyncio.create_task(service.run(install_signals=False))
    tally = Tally()
    watcher = make_consumer(settings.kafka, f"demo-watch-{uuid.uuid4().hex[:6]}")
    watcher.subscribe([settings.topics.results, settings.topics.dead_letter])
    await watcher.start()
    producer = make_producer(settings.kafka)
    await producer.start()
    sent_ms: dict[str, float] = {}
    started = time.monotonic()
    try:
        for s in samples:
            value = orjson.dumps(
                {
                    "id": s.id,
                    "text": s.text,
                    "metadata": {"gold_label": s.gold_label, "source": s.source},
                }
            )
            sent_ms[s.id] = time.time() * 1000
            await producer.send(settings.topics.requests, value, key=s.id.encode())
        await producer.flush()
        last_print = 0.0
        while len(tally.results) + sum(tally.dead_letters.values()) < len(samples):
            if run.done():
                run.result()
                raise EscalatorError("the service stopped before finishing the demo")
            if time.monotonic() - started > 600:
                raise EscalatorError("demo timed out after 600 s")
            batch = await watcher.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    _count(settings, tally, r, sent_ms)
            if time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                _progress(tally, len(samples))
        _progress(tally, len(samples))
        print(file=sys.stderr)
    finally:
        elapsed = time.monotonic() - started
        await producer.stop()
        await watcher.stop()
        service.stop()
        await run
    return tally, elapsed


def _count(settings: Settings, tally: Tally, record: Any, sent_ms: dict[str, float]) -> None:
    if record.topic == settings.topics.dead_letter:
        headers = dict(record.headers or ())
        tally.dead_letters[bytes(headers.get("x-escalator-reason", b"?")).decode()] += 1
        return
    result = orjson.loads(record.value)
    rid = result["id"]
    if rid in tally.results:
        tally.duplicates += 1
        return
    tally.results[rid] = result
    if rid in sent_ms:
        tally.latency_ms.append(record.timestamp - sent_ms[rid])


def _progress(tally: Tally, total: int) -> None:
    escalated = sum(1 for r in tally.results.values() if r["escalated"])
    done = len(tally.results) + sum(tally.dead_letters.values())
    print(
        f"\r  {done}/{total} decided, {escalated} escalated, "
        f"{sum(tally.dead_letters.values())} dead-lettered",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(
    settings: Settings, samples: list[datasets.Sample], tally: Tally, elapsed: float, sim_: bool
) -> None:
    results = list(tally.results.values())
    n = len(results)
    escalated = [r for r in results if r["escalated"]]
    cost = sum(r["cost_usd"] for r in results)
    strong_costs = [
        a["cost_usd"] for r in escalated for a in r["attempts"] if a["tier"] == "strong"
    ]
    gold = {s.id: s.gold_label for s in samples}
    correct = sum(1 for r in results if r["label"] == gold.get(r["id"]))
    tag = " [simulated]" if sim_ else ""
    print(
        f"\nSummary{tag}: {n} results in {elapsed:.1f}s, {tally.duplicates} duplicates, "
        f"{sum(tally.dead_letters.values())} dead letters {dict(tally.dead_letters)}"
    )
    print(f"  decided at cheap tier ({settings.model.cheap_model}): {n - len(escalated)}")
    print(f"  decided at strong tier ({settings.model.strong_model}): {len(escalated)}")
    print(
        f"  escalation rate: {len(escalated) / max(1, n):.1%} "
        f"(threshold {settings.routing.threshold})"
    )
    print(f"  accuracy against human labels: {correct / max(1, n):.1%}")
    print(f"  cost: ${cost:.6f} for {n} requests (${1000 * cost / max(1, n):.5f} per 1k){tag}")
    if strong_costs:
        all_strong = statistics.fmean(strong_costs) * n
        print(
            f"  all-strong counterfactual (mean observed strong call x {n}): "
            f"${all_strong:.6f}; saved {1 - cost / all_strong:.1%}{tag}"
        )
    print(
        f"  end-to-end latency p50 {_pct(tally.latency_ms, 0.5):.0f} ms, "
        f"p99 {_pct(tally.latency_ms, 0.99):.0f} ms{tag}"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="run the whole round trip on embedded defaults")
    demo.add_argument("--count", type=int, default=300, help="texts to publish (default 300)")
    demo.set_defaults(func=cmd_demo)
