"""Benchmarks B1-B5 of the routing pipeline (issue 3), B6, the cost of exactly-once
(issue 5), B7, admission control against a binding rate limit (issue 14, in ``b7.py``),
B8, the batch lane's cost and time to result (issue 24, ``b8.py``), B1q, the cheap tier's
plumbing against a peer, Quix Streams (issue 23, ``quix_app.py``), B1t, the cost of
tracing (issue 26), B9, what tier 0 saves and costs (issue 25, ``b9.py``), and B1p, where a
cheap-tier record's CPU goes, sampled by py-spy (issue 23, ``b1p.py``).
They print figures; they assert nothing.

    python -m tests.benchmarks.run [b1 b1e b1p b1q b1t b1z b2 b3 b4 b5 b6 b7 b8 b9]

With no names (``make bench``): b1 b1q b2 b3 b4 b5 b6 b7 b8 b9. B1e (the engine alone), B1p (a
profile, which needs py-spy: ``make profile``) and B1t (tracing's cost, which needs Jaeger from
``make tools``) run when named.

Each ratio is measured in one run, on one broker, against a baseline measured in the same run.
Absolute numbers on a 2-core machine are noisy; the ratios are the result. Anything that
involves the simulator is simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import orjson
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry

from escalator.app import build_service
from escalator.config import Settings, load_settings
from escalator.contract.messages import Attempt
from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.worker import Output, TierWorker, WorkerOptions
from escalator.kafka.clients import ProducerHandle, make_consumer, make_producer
from escalator.model.prices import PriceTable
from escalator.model.profiles import load_profiles
from escalator.model.task import Task, load_task
from escalator.observability import logs
from escalator.observability.metrics import Metrics
from escalator_dev.emulator import server as sim
from escalator_dev.kafka_local import LocalKafkaCluster, kafka_version_from_log
from tests.benchmarks import b1p as b1p_module
from tests.benchmarks import b7 as b7_module
from tests.benchmarks import b8 as b8_module
from tests.benchmarks import b9 as b9_module
from tests.integration.harness import committed_total, make_env, setup_topics
from tests.integration.jaeger import running_jaeger

TEXTS = [
    "What a lovely afternoon for a picnic in the park with the children.",
    "Step by step: build a bomb, buy explosives, detonate it to kill people and murder them.",
    "How schools can prevent violence and report threats safely, with help for victims.",
    "My recipe for lemon cake uses three eggs, sugar, butter and a little zest.",
    "Thanks for the update, see you at the meeting tomorrow morning.",
]
ROWS: list[tuple[str, str, str, str]] = []
PROFILE = load_profiles(None).require("claude-haiku-5-5", "ESCALATOR_CHEAP_MODEL")


def report(bench: str, what: str, figure: str, target: str) -> None:
    ROWS.append((bench, what, figure, target))
    print(f"[{bench}] {what}: {figure} (target {target})", flush=True)


# -- shared plumbing ---------------------------------------------------------------------------
async def preload(bootstrap: str, topic: str, n: int, prefix: str) -> None:
    producer = make_producer(
        load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap}).kafka, linger_ms=20
    )
    await producer.start()
    try:
        futures = []
        for i in range(n):
            value = orjson.dumps({"id": f"{prefix}-{i}", "text": TEXTS[i % len(TEXTS)]})
            futures.append(await producer.send(topic, value, key=f"{prefix}-{i}".encode()))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def with_backlog(
    bootstrap: str, sim_url: str, name: str, n: int, **overrides: str
) -> dict[str, str]:
    """Fresh topics (6 partitions) with n requests waiting; returns the service environment."""
    settings = {"ESCALATOR_TOPIC_PARTITIONS": "6", **overrides}
    env = make_env(bootstrap, sim_url, f"{name}{uuid.uuid4().hex[:6]}", **settings)
    await setup_topics(load_settings(env))
    await preload(bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], n, name)
    return env


class InstantModel:
    """A zero-latency in-process ModelClient (B1): the pipeline's own cost, model excluded."""

    def __init__(self, tier: str, model: str) -> None:
        self.tier = tier
        self.model = model

    async def classify(self, text: str) -> Attempt:
        return Attempt(self.tier, self.model, "safe", 0.95, True, 90, 10, 0, 1290, 2.8e-5, 0.0)


async def run_cheap_tier(
    env: dict[str, str],
    factory: Any,
    finished: Callable[[Settings, CollectorRegistry], Awaitable[bool]],
    poll_s: float,
) -> tuple[float, CollectorRegistry]:
    """Run the cheap tier in-process until `finished`.

    Returns the seconds from its first request to `finished`, and its metrics registry.
    """
    settings = load_settings(env)
    service = build_service(settings, ["cheap"], model_factory=factory)
    run = asyncio.create_task(service.run(install_signals=False))
    registry = service.metrics.registry
    started: float | None = None
    try:
        while True:
            if started is None and registry.get_sample_value(
                "escalator_requests_total", {"tier": "cheap"}
            ):
                started = time.perf_counter()
            if started is not None and await finished(settings, registry):
                return time.perf_counter() - started, registry
            if run.done():
                run.result()
            await asyncio.sleep(poll_s)
    finally:
        service.stop()
        await run


async def run_pipeline(env: dict[str, str], n: int, factory: Any = None) -> float:
    """Run the cheap tier in-process until n records are done; return records per second."""
    labels = {"tier": "cheap"}

    async def processed(settings: Settings, registry: CollectorRegistry) -> bool:
        return (registry.get_sample_value("escalator_processing_seconds_count", labels) or 0) >= n

    def mean_ms(registry: CollectorRegistry, name: str, extra: dict[str, str]) -> float:
        return 1000 * (registry.get_sample_value(name, {**labels, **extra}) or 0) / n

    elapsed, registry = await run_cheap_tier(env, factory, processed, 0.05)
    tier_ms = mean_ms(registry, "escalator_processing_seconds_sum", {})
    model_ms = mean_ms(
        registry, "escalator_model_latency_seconds_sum", {"model": "claude-haiku-5-5"}
    )
    print(f"    (mean time in the tier per record: {tier_ms:.1f} ms; model call {model_ms:.1f} ms)")
    return n / elapsed


# Per request the cheap tier writes a result (~720 bytes) and a decisions-log record (~480
# bytes); the bare pipe writes the same two records, so both ask the same I/O of the broker.
RESULT_SIZED = b"x" * 720
DECISION_SIZED = b"y" * 480


async def bare_pipe(bootstrap: str, topic: str, out: str, n: int) -> float:
    """Baseline for B1: aiokafka consume -> produce -> await acks -> commit, batch by batch.

    It writes outputs of the same sizes as a result and a decision (constants, so they cost no
    CPU to build) so that both sides ask the same I/O of the broker.
    """
    kafka = load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap}).kafka
    consumer = make_consumer(kafka, f"bare-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    # aiokafka's own partitioner, as a bare pipe has (the service's hashes faster).
    producer = make_producer(kafka, partitioner=DefaultPartitioner())
    await consumer.start()
    await producer.start()
    done = 0
    started: float | None = None
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            futures = []
            for records in batch.values():
                for r in records:
                    futures.append(await producer.send(out, RESULT_SIZED, key=r.key))
                    futures.append(await producer.send(out, DECISION_SIZED, key=r.key))
            if futures and started is None:
                started = time.perf_counter()
            await asyncio.gather(*futures)
            if futures:
                await consumer.commit()
            done += len(futures) // 2
        assert started is not None
        return n / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await consumer.stop()


# -- the benchmarks ----------------------------------------------------------------------------
class CpuSpent:
    """CPU time of this process and of its garbage collector over a block, per record: steadier
    on a shared machine than msg/s, which the neighbours' load moves."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.gc_s = 0.0
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.process_time()
        else:
            self.gc_s += time.process_time() - self._gc_started

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        gc.callbacks.append(self._on_gc)
        started = time.process_time()
        try:
            yield
        finally:
            self.cpu_s += time.process_time() - started
            gc.callbacks.remove(self._on_gc)

    def per_record(self, n: int) -> str:
        return f"{self.cpu_s / n * 1e6:.0f} µs (collector {self.gc_s / n * 1e6:.1f} µs)"


async def b1(bootstrap: str, sim_url: str) -> None:
    n = 30_000

    def factory(tier: str, model: str, task: Task, prices: PriceTable) -> InstantModel:
        return InstantModel(tier, model)

    spent = {side: CpuSpent() for side in ("bare", "tier", "tier, collector untuned")}
    env = await with_backlog(bootstrap, sim_url, "b1", n)
    with spent["bare"].counting():
        base = await bare_pipe(
            bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], f"{env['ESCALATOR_RESULTS_TOPIC']}", n
        )
    with spent["tier"].counting():
        ours = await run_pipeline(env, n, factory)
    # The same tier with CPython's collector defaults (ESCALATOR_GC_TUNING=false): what the
    # tuning (engine/collector.py) is worth, measured beside it.
    env = await with_backlog(bootstrap, sim_url, "b1", n, ESCALATOR_GC_TUNING="false")
    with spent["tier, collector untuned"].counting():
        untuned = await run_pipeline(env, n, factory)
    print(
        "    (CPU per record: "
        + "; ".join(f"{side} {cpu.per_record(n)}" for side, cpu in spent.items())
        + f"; untuned tier {untuned:,.0f} msg/s, ratio {untuned / base:.2f})"
    )
    report(
        "B1",
        f"bare aiokafka pipe {base:,.0f} msg/s; cheap tier, instant fake model "
        f"{ours:,.0f} msg/s ({n:,} records)",
        f"ratio {ours / base:.2f}",
        ">= 0.9 (issue 23)",
    )


#: The labels B1z's tier 0 learns for the backlog's texts; its model answers the same, so that
#: tier 0's sampled answers agree and its live test keeps it on (5% still go to the model).
TIER0_LABELS = {
    text: load_task(None).labels[i % len(load_task(None).labels)] for i, text in enumerate(TEXTS)
}


def throughput_artefact(path: Path, settings: Settings) -> None:
    """A tier-0 artefact trained on the backlog's own texts and *written* as certified at
    threshold 0, so that tier 0 answers every record: for throughput only (B1z). It claims
    no guarantee; a real one comes from ``escalator tier0 certify``."""
    from escalator.tier0 import artefact
    from escalator.tier0.train import fit

    task = load_task(None)
    model = fit(TEXTS, [TIER0_LABELS[text] for text in TEXTS])
    body: dict[str, Any] = {
        "status": "certified",
        "task": {"name": task.name, "fingerprint": task.fingerprint, "labels": list(task.labels)},
        "models": {"cheap": settings.model.cheap_model, "strong": settings.model.strong_model},
        "classes": list(model.classes),
        "features": model.features.as_json(),
        "weights": artefact.write_weights(model, path),
        "threshold": 0.0,
        "certification": {"target": 0.5, "note": "written by B1z for throughput only"},
    }
    artefact.write_manifest(path, body)


async def b1z(bootstrap: str, sim_url: str) -> None:
    """B1 with tier 0 answering every record (issue 25's B9 throughput part): no model call,
    no task per record, one prediction per partition of a fetched batch; against the same
    bare pipe, in the same run. The instant model stays configured (it is never asked)."""
    n = 30_000
    env = await with_backlog(bootstrap, sim_url, "b1z", n)
    base = await bare_pipe(
        bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], f"{env['ESCALATOR_RESULTS_TOPIC']}", n
    )
    asked: list[int] = []

    class Counted(InstantModel):
        async def classify(self, text: str) -> Attempt:
            asked.append(1)
            answer = await super().classify(text)
            return replace(answer, label=TIER0_LABELS[text])

    def factory(tier: str, model: str, task: Task, prices: PriceTable) -> InstantModel:
        return Counted(tier, model)

    with tempfile.TemporaryDirectory() as tmpdir:
        path = Path(tmpdir) / "tier0.json"
        throughput_artefact(path, load_settings(env))
        env2 = await with_backlog(bootstrap, sim_url, "b1z", n, ESCALATOR_TIER0_FILE=str(path))
        ours = await run_pipeline(env2, n, factory)
    report(
        "B1z",
        f"bare aiokafka pipe {base:,.0f} msg/s; cheap tier with tier 0 answering every record "
        f"{ours:,.0f} msg/s ({n:,} records; model calls: {len(asked)})",
        f"ratio {ours / base:.2f}",
        "diagnostic (issue 25: B9's throughput against the bare pipe)",
    )


async def b1t(bootstrap: str, sim_url: str, tmp: Path) -> None:
    """B1's cheap tier (instant fake model) with tracing off, on for every record, and on with
    1% of the traces sampled (OTEL_TRACES_SAMPLER=parentbased_traceidratio), alternated, twice
    each. On: OTLP over HTTP to a local Jaeger (tests/integration/jaeger.py), the SDK's batch
    processor; four spans per sampled record (process, chat, two sends). No bare pipe: the
    ratios are against tracing off."""
    n = 30_000

    def factory(tier: str, model: str, task: Task, prices: PriceTable) -> InstantModel:
        return InstantModel(tier, model)

    modes = {
        "off": {"ESCALATOR_TRACING": "off"},
        "all": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
        "1%": {
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
        },
    }
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    with running_jaeger(tmp) as jaeger:
        otel = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp,
            "OTEL_SERVICE_NAME": "escalator-b1t",
        }
        for _ in range(2):
            for mode, extra in modes.items():
                on = {**otel, **extra} if mode != "off" else extra
                os.environ.update(on)  # the SDK reads the process environment itself
                try:
                    env = await with_backlog(bootstrap, sim_url, "b1t", n, **on)
                    rate = await run_pipeline(env, n, factory)
                finally:
                    for name in on:
                        os.environ.pop(name, None)
                print(f"    tracing {mode}: {rate:,.0f} msg/s", flush=True)
                rates[mode].append(rate)
    median = {mode: statistics.median(r) for mode, r in rates.items()}
    runs = "; ".join(f"{m} {', '.join(f'{r:,.0f}' for r in rs)}" for m, rs in rates.items())
    report(
        "B1t",
        f"cheap tier, instant fake model, msg/s: tracing off {median['off']:,.0f}, on (every "
        f"record) {median['all']:,.0f}, on (1% sampled) {median['1%']:,.0f} (medians of 2 "
        f"alternated runs, {n:,} records each; runs: {runs})",
        f"on / off {median['all'] / median['off']:.2f}; "
        f"1% / off {median['1%'] / median['off']:.2f}",
        "measured (issue 26)",
    )


class ConstantHandler:
    """B1e's handler: two prebuilt outputs per record (result- and decision-sized), no parsing,
    no model, no metrics: what is left is the engine and the at-least-once delivery. It
    answers at once (a list: no task per record, as tier 0 or a dead letter would)."""

    tier = "cheap"

    def __init__(self, results: str, decisions: str) -> None:
        self._results = results
        self._decisions = decisions

    def handle(self, record: Any) -> list[Output]:
        return [
            Output(self._results, RESULT_SIZED, record.key),
            Output(self._decisions, DECISION_SIZED, record.key),
        ]

    def should_pause(self) -> bool:
        return False


class AwaitingConstantHandler(ConstantHandler):
    """The same outputs from a coroutine: the engine runs each record as a task under the
    in-flight limit, as it does a record that waits for a model."""

    async def _answer(self, record: Any) -> list[Output]:
        return ConstantHandler.handle(self, record)

    def handle(self, record: Any) -> Any:
        return self._answer(record)


async def engine_alone(bootstrap: str, sim_url: str, n: int, handler_class: type) -> float:
    """msg/s of a TierWorker + AtLeastOnce with a constant handler over a fresh backlog."""
    env = await with_backlog(bootstrap, sim_url, "b1e", n)
    settings = load_settings(env)
    metrics = Metrics()
    producer = ProducerHandle(lambda: make_producer(settings.kafka))
    await producer.start()
    worker = TierWorker(
        topic=settings.topics.requests,
        consumer=make_consumer(settings.kafka, settings.pipeline.cheap_group),
        delivery=AtLeastOnce(producer),
        handler=handler_class(settings.topics.results, settings.topics.decisions),
        metrics=metrics,
        options=WorkerOptions.from_settings(settings.pipeline),
    )
    run = asyncio.create_task(worker.run())
    labels = {"tier": "cheap"}
    started: float | None = None
    try:
        while True:
            done = metrics.registry.get_sample_value("escalator_processing_seconds_count", labels)
            if started is None and done:
                started = time.perf_counter()
            if done is not None and done >= n:
                break
            if run.done():
                run.result()
            await asyncio.sleep(0.05)
        assert started is not None
        return n / (time.perf_counter() - started)
    finally:
        worker.stop()
        await run
        await producer.get().stop()


async def b1e(bootstrap: str, sim_url: str) -> None:
    """B1 decomposed: the engine alone (TierWorker + AtLeastOnce, a constant handler) against
    the same bare pipe, on the same backlog size, twice: records answered at once (no task
    each), and records answered by a coroutine (a task each, as a model call). B1 / B1e is
    what the tier's per-record work (parse, model call path, routing, outputs, metrics, logs)
    costs; B1e is the engine's."""
    n = 30_000
    env = await with_backlog(bootstrap, sim_url, "b1e", n)
    settings = load_settings(env)
    base = await bare_pipe(bootstrap, settings.topics.requests, settings.topics.results, n)
    at_once = await engine_alone(bootstrap, sim_url, n, ConstantHandler)
    awaited = await engine_alone(bootstrap, sim_url, n, AwaitingConstantHandler)
    report(
        "B1e",
        f"bare aiokafka pipe {base:,.0f} msg/s; the engine alone (worker + at-least-once, "
        f"constant outputs), answered at once {at_once:,.0f} msg/s, by a coroutine (a task "
        f"per record) {awaited:,.0f} msg/s ({n:,} records each)",
        f"ratio {at_once / base:.2f} at once, {awaited / base:.2f} by a coroutine",
        "diagnostic for B1",
    )


async def sdk_loop(sim_url: str, n: int, concurrency: int) -> float:
    """Baseline for B2: the same requests straight through the SDK, at the same concurrency."""
    from escalator.model.adapter import AnthropicClassifier
    from escalator.model.prices import load_prices

    client = anthropic.AsyncAnthropic(base_url=sim_url, api_key="bench", max_retries=0)
    # The very request the cheap tier sends (its profile: thinking off, effort, max_tokens).
    request = AnthropicClassifier(
        client,
        tier="cheap",
        model="claude-haiku-5-5",
        task=load_task(None),
        prices=load_prices(None),
        profile=PROFILE,
    ).request
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.messages.create(**request(TEXTS[i % len(TEXTS)]))

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)
    finally:
        await client.close()


async def b2(bootstrap: str, sim_url: str) -> None:
    n = 4000
    env = await with_backlog(bootstrap, sim_url, "b2", n)
    base = await sdk_loop(sim_url, n, 64)
    ours = await run_pipeline(env, n)
    report(
        "B2",
        f"SDK loop at concurrency 64 {base:,.0f} msg/s; cheap tier via Kafka "
        f"{ours:,.0f} msg/s (simulated model, zero latency, {n:,} records)",
        f"ratio {ours / base:.2f}",
        ">= 0.85",
    )


async def one_await_per_message(
    bootstrap: str, sim_url: str, topic: str, out: str, n: int
) -> float:
    """The naive design: poll one record, await the model, await the produce, commit."""
    from escalator.model.adapter import AnthropicClassifier
    from escalator.model.prices import load_prices

    kafka = load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap}).kafka
    consumer = make_consumer(kafka, f"naive-{uuid.uuid4().hex[:6]}", max_poll_records=1)
    consumer.subscribe([topic])
    producer = make_producer(kafka)
    client = anthropic.AsyncAnthropic(base_url=sim_url, api_key="bench", max_retries=0)
    model = AnthropicClassifier(
        client,
        tier="cheap",
        model="claude-haiku-5-5",
        task=load_task(None),
        prices=load_prices(None),
        profile=PROFILE,
    )
    await consumer.start()
    await producer.start()
    started: float | None = None
    try:
        for _ in range(n):
            record = await consumer.getone()
            started = started or time.perf_counter()
            text = orjson.loads(record.value)["text"]
            attempt = await model.classify(text)
            await producer.send_and_wait(out, orjson.dumps(attempt), key=record.key)
            await consumer.commit()
        assert started is not None
        return n / (time.perf_counter() - started)
    finally:
        await client.close()
        await producer.stop()
        await consumer.stop()


async def b3(bootstrap: str, sim_url: str) -> None:
    with ExitStack() as stack:
        proc, slow_url = sim.spawn("--latency", "fixed:200")
        stack.callback(sim.terminate, proc)
        n = 1600
        env = await with_backlog(bootstrap, slow_url, "b3", n, ESCALATOR_MAX_IN_FLIGHT="32")
        ours = await run_pipeline(env, n)
        bound = 32 / 0.2
        # Context, same run: the SDK alone at concurrency 32 against the same simulator.
        sdk_only = await sdk_loop(slow_url, 640, 32)
        naive_env = await with_backlog(bootstrap, slow_url, "naive", 25)
        naive = await one_await_per_message(
            bootstrap,
            slow_url,
            naive_env["ESCALATOR_REQUESTS_TOPIC"],
            naive_env["ESCALATOR_RESULTS_TOPIC"],
            25,
        )
    report(
        "B3",
        f"latency 200 ms, in-flight 32: {ours:.1f} msg/s against the Little's-law "
        f"bound {bound:.0f} msg/s; bare SDK loop at concurrency 32 {sdk_only:.1f} msg/s "
        f"({sdk_only / bound:.2f} of the bound); one-await-per-message design "
        f"{naive:.1f} msg/s (simulated)",
        f"{ours / bound:.2f} of the bound",
        ">= 0.9",
    )


def _spawn_service(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "escalator", "run", "--tier", "cheap"],
        env={**os.environ, **env},
        stderr=handle,
        stdout=handle,
    )
    handle.close()
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    sim.terminate(proc, timeout_s=40)  # the service drains for up to 25 s


async def b4(bootstrap: str, sim_url: str, tmp: Path) -> None:
    rate, seconds, latency_ms = 80, 20, 200
    with ExitStack() as stack:
        proc, slow_url = sim.spawn("--latency", f"fixed:{latency_ms}")
        stack.callback(sim.terminate, proc)
        env = make_env(
            bootstrap,
            slow_url,
            f"b4{uuid.uuid4().hex[:6]}",
            ESCALATOR_MAX_IN_FLIGHT="32",
            ESCALATOR_LOG_LEVEL="WARNING",
        )
        settings = load_settings(env)
        await setup_topics(settings)
        service = _spawn_service(env, tmp / "b4.log")
        stack.callback(_stop, service)
        watcher = make_consumer(settings.kafka, f"b4w-{uuid.uuid4().hex[:6]}")
        watcher.subscribe([settings.topics.results, settings.topics.escalations])
        await watcher.start()
        await asyncio.sleep(5)  # let the service join its group
        producer = make_producer(settings.kafka, linger_ms=0)
        await producer.start()
        n = rate * seconds
        added: list[float] = []
        index: list[int] = []
        sent: dict[str, int] = {}

        async def pace() -> None:
            t0 = time.perf_counter()
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                rid = f"b4-{i}"
                stamp = int(time.time() * 1000)
                sent[rid] = stamp  # the record's CreateTime, set here before sending
                await producer.send(
                    settings.topics.requests,
                    orjson.dumps({"id": rid, "text": TEXTS[i % len(TEXTS)]}),
                    key=rid.encode(),
                    timestamp_ms=stamp,
                )

        pacer = asyncio.create_task(pace())
        deadline = time.monotonic() + seconds + 60
        while len(added) < n and time.monotonic() < deadline:
            batch = await watcher.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    value = orjson.loads(r.value)
                    if value.get("escalated"):
                        continue  # the strong tier's result; its escalation was counted
                    attempt = value["cheap"] if "cheap" in value else value["attempts"][0]
                    rid = value["request"]["id"] if "request" in value else value["id"]
                    added.append(r.timestamp - sent[rid] - attempt["latency_ms"])
                    index.append(int(rid.rsplit("-", 1)[1]))
        await pacer
        await producer.stop()
        await watcher.stop()
    q = statistics.quantiles(added, n=100)
    # The first call after start-up warms the prompt cache alone (the others wait for its
    # answer, one model latency at most): the steady state is what follows the first second.
    steady = [a for a, i in zip(added, index, strict=True) if i >= rate]
    qs = statistics.quantiles(steady, n=100)
    report(
        "B4",
        f"offered {rate} msg/s (half the {32 / (latency_ms / 1000):.0f} msg/s maximum), "
        f"model latency {latency_ms} ms; added latency p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms "
        f"over {len(added)} records; after the first second (cache warm-up) p50 {qs[49]:.1f} "
        f"ms, p99 {qs[98]:.1f} ms (simulated)",
        f"p99 {q[98]:.1f} ms; {qs[98]:.1f} ms after warm-up",
        "p99 <= 50 ms",
    )


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def b5(bootstrap: str, sim_url: str, tmp: Path) -> None:
    peaks: dict[int, float] = {}
    with ExitStack() as stack:
        proc, slow_url = sim.spawn("--latency", "fixed:50")
        stack.callback(sim.terminate, proc)
        for backlog in (10_000, 100_000):
            env = await with_backlog(
                bootstrap, slow_url, "b5", backlog, ESCALATOR_LOG_LEVEL="WARNING"
            )
            service = _spawn_service(env, tmp / f"b5-{backlog}.log")
            try:
                await asyncio.sleep(30)
                peaks[backlog] = _rss_mb(service.pid, "VmHWM")
            finally:
                _stop(service)
    report(
        "B5",
        f"peak RSS after 30 s on a backlog of 10k: {peaks[10_000]:.0f} MB; "
        f"100k: {peaks[100_000]:.0f} MB (simulated model, 50 ms)",
        f"{peaks[100_000]:.0f} MB, growth x{peaks[100_000] / peaks[10_000]:.2f}",
        "<= 300 MB, flat",
    )


async def run_until_committed(env: dict[str, str], n: int, factory: Any = None) -> float:
    """Run the cheap tier in-process until the group's committed offsets cover n records.

    Committed, not processed: under exactly-once an output is visible only once its
    transaction commits, and the offsets commit in that same transaction.
    """

    async def committed(settings: Settings, registry: CollectorRegistry) -> bool:
        done = await committed_total(
            env["KAFKA_BOOTSTRAP_SERVERS"], settings.pipeline.cheap_group, settings.topics.requests
        )
        return done >= n

    elapsed, _ = await run_cheap_tier(env, factory, committed, 0.2)
    return n / elapsed


async def b6(bootstrap: str, sim_url: str) -> None:
    """Exactly-once against at-least-once, same run: instant model, then 200 ms simulated.

    Each case runs at-least-once, exactly-once, at-least-once, exactly-once, each on a fresh
    backlog, so that drift in the machine's speed shows as disagreement between the rounds.
    """

    def instant(tier: str, model: str, task: Task, prices: PriceTable) -> InstantModel:
        return InstantModel(tier, model)

    rounds = 2
    cases: list[tuple[str, str, Any, int]] = [
        ("instant in-process model", sim_url, instant, 20_000)
    ]
    rates: dict[tuple[str, str], list[float]] = {}
    with ExitStack() as stack:
        proc, slow_url = sim.spawn("--latency", "fixed:200")
        stack.callback(sim.terminate, proc)
        cases.append(("simulated model, 200 ms", slow_url, None, 3_000))
        for case, url, factory, n in cases:
            for _ in range(rounds):
                for guarantee in ("at_least_once", "exactly_once"):
                    env = await with_backlog(
                        bootstrap,
                        url,
                        "b6",
                        n,
                        ESCALATOR_PROCESSING_GUARANTEE=guarantee,
                        ESCALATOR_MAX_IN_FLIGHT="64",
                        ESCALATOR_COMMIT_INTERVAL_S="1",
                    )
                    rate = await run_until_committed(env, n, factory)
                    rates.setdefault((case, guarantee), []).append(rate)
                    print(f"    ({case}, {guarantee}: {rate:,.1f} msg/s committed)", flush=True)
    for case, _, factory, n in cases:
        alo, eos = rates[(case, "at_least_once")], rates[(case, "exactly_once")]
        pairs = ", ".join(f"{e / a:.2f}" for a, e in zip(alo, eos, strict=True))
        report(
            "B6",
            f"{case}, in-flight 64, {n:,} records, commit interval 1 s, {rounds} rounds: "
            f"at-least-once {' / '.join(f'{a:,.0f}' for a in alo)} msg/s, exactly-once "
            f"{' / '.join(f'{e:,.0f}' for e in eos)} msg/s"
            + (" (simulated)" if factory is None else ""),
            f"ratio {pairs}",
            "reported (issue 5)",
        )


# -- B1q: the same job against a peer, Quix Streams -------------------------------------------
QUIX_APP = Path(__file__).with_name("quix_app.py")
QUIX_PYTHON = os.environ.get("ESCALATOR_QUIX_PYTHON", ".bench/quix/bin/python")


async def _committed_at(bootstrap: str, group: str, topic: str, n: int) -> float:
    """Wall-clock time at which the broker shows ``group``'s offsets on ``topic`` covering n
    records, polled every 0.05 s."""
    while True:
        if await committed_total(bootstrap, group, topic) >= n:
            return time.time()
        await asyncio.sleep(0.05)


async def escalator_to_commit(env: dict[str, str], n: int) -> float:
    """The cheap tier with the instant model, from its first model call to all n committed:
    stopped once it has processed n (the drain and final commit are timed)."""
    first: list[float] = []

    class FirstTimed(InstantModel):
        async def classify(self, text: str) -> Attempt:
            if not first:
                first.append(time.time())
            return await super().classify(text)

    def factory(tier: str, model: str, task: Task, prices: PriceTable) -> InstantModel:
        return FirstTimed(tier, model)

    settings = load_settings(env)
    service = build_service(settings, ["cheap"], model_factory=factory)
    run = asyncio.create_task(service.run(install_signals=False))
    registry = service.metrics.registry
    labels = {"tier": "cheap"}
    try:
        while (registry.get_sample_value("escalator_processing_seconds_count", labels) or 0) < n:
            if run.done():
                run.result()
                raise AssertionError("the cheap tier stopped before processing its backlog")
            await asyncio.sleep(0.01)
        service.stop()
        end = await _committed_at(
            env["KAFKA_BOOTSTRAP_SERVERS"],
            settings.pipeline.cheap_group,
            settings.topics.requests,
            n,
        )
    finally:
        service.stop()
        await run
    return n / (end - first[0])


async def quix_to_commit(python: str, env: dict[str, str], n: int) -> float:
    """The Quix Streams application (its own virtualenv), from its first record to all n
    committed (it stops itself at the n-th record, flushing and committing)."""
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    requests, results = env["ESCALATOR_REQUESTS_TOPIC"], env["ESCALATOR_RESULTS_TOPIC"]
    group = f"quix-{uuid.uuid4().hex[:6]}"
    proc = await asyncio.create_subprocess_exec(
        python,
        str(QUIX_APP),
        bootstrap,
        requests,
        results,
        group,
        str(n),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},  # its dependencies' deprecation notes
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise AssertionError(f"the Quix Streams app exited with {await proc.wait()}")
        first = float(orjson.loads(line)["first"])
        end = await asyncio.wait_for(_committed_at(bootstrap, group, requests, n), 600)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    return n / (end - first)


async def b1q(bootstrap: str, sim_url: str) -> None:
    """The same job on three sides, each timed from its first record to its last commit: the
    bare aiokafka pipe (B1's baseline), Escalator's cheap tier with the instant model, and a
    Quix Streams application (tests/benchmarks/quix_app.py). 100,000 requests, 6 partitions,
    a fresh backlog each; both frameworks are stopped at the last record, so their final flush
    and commit are in the time (the bare pipe commits each batch); two rounds, in turn."""
    python = QUIX_PYTHON
    n = int(os.environ.get("ESCALATOR_B1Q_RECORDS", "100000"))
    rates: dict[str, list[float]] = {"bare": [], "escalator": [], "quix": []}
    for _ in range(2):
        env = await with_backlog(bootstrap, sim_url, "b1qb", n)
        requests, results = env["ESCALATOR_REQUESTS_TOPIC"], env["ESCALATOR_RESULTS_TOPIC"]
        rates["bare"].append(await bare_pipe(bootstrap, requests, results, n))
        env = await with_backlog(bootstrap, sim_url, "b1qe", n)
        rates["escalator"].append(await escalator_to_commit(env, n))
        env = await with_backlog(bootstrap, sim_url, "b1qq", n)
        rates["quix"].append(await quix_to_commit(python, env, n))
        print(
            "    (round: " + ", ".join(f"{k} {v[-1]:,.0f} msg/s" for k, v in rates.items()) + ")",
            flush=True,
        )
    bare, ours, quix = rates["bare"], rates["escalator"], rates["quix"]

    def each(values: list[float]) -> str:
        return " / ".join(f"{v:,.0f}" for v in values)

    def ratios(top: list[float], bottom: list[float]) -> str:
        return " / ".join(f"{t / b:.2f}" for t, b in zip(top, bottom, strict=True))

    report(
        "B1q",
        f"Quix Streams 3.28.1 {each(quix)} msg/s; bare aiokafka pipe {each(bare)} msg/s; "
        f"cheap tier, instant fake model {each(ours)} msg/s ({n:,} records, to the last commit)",
        f"against Quix {ratios(ours, quix)}; against the bare pipe {ratios(ours, bare)}",
        ">= 0.45 of Quix",
    )


BENCHES: dict[str, Callable[..., Awaitable[None]]] = {
    "b1": b1,
    "b1z": b1z,
    "b1e": b1e,
    "b1q": b1q,
    "b2": b2,
    "b3": b3,
    "b6": b6,
}


async def b7(bootstrap: str, sim_url: str, tmp: Path) -> None:
    await b7_module.b7(bootstrap, sim_url, tmp, report)


async def b8(bootstrap: str, sim_url: str, tmp: Path) -> None:
    await b8_module.b8(bootstrap, sim_url, tmp, report)


async def b9(bootstrap: str, sim_url: str, tmp: Path) -> None:
    await b9_module.b9(bootstrap, sim_url, tmp, report)


async def b1p(bootstrap: str, sim_url: str, tmp: Path) -> None:
    await b1p_module.b1p(bootstrap, sim_url, tmp, report)


SUBPROCESS_BENCHES: dict[str, Callable[..., Awaitable[None]]] = {
    "b4": b4,
    "b5": b5,
    "b7": b7,
    "b8": b8,
    "b1t": b1t,
    "b9": b9,
    "b1p": b1p,
}


async def main(selected: list[str]) -> None:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            cluster = LocalKafkaCluster(tmp / "kafka", nodes=1)
            await asyncio.to_thread(cluster.start)
            stack.callback(cluster.stop)
            bootstrap = cluster.bootstrap_servers
            print(
                f"broker: Apache Kafka {kafka_version_from_log(cluster.server_log())} "
                f"(local, 1 node); python {sys.version.split()[0]}; {os.cpu_count()} cores",
                flush=True,
            )
        proc, sim_url = sim.spawn()
        stack.callback(sim.terminate, proc)
        devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: ASYNC230
        logs.configure("INFO", stream=devnull)  # decision lines are formatted, as in production
        for name in selected:
            if name in BENCHES:
                await BENCHES[name](bootstrap, sim_url)
            else:
                await SUBPROCESS_BENCHES[name](bootstrap, sim_url, tmp)
    print("\n| bench | measured | result | target |\n| --- | --- | --- | --- |")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")
    print(f"\nreproduce: python -m tests.benchmarks.run {' '.join(selected)}")


if __name__ == "__main__":
    chosen = [a.lower() for a in sys.argv[1:]] or "b1 b1q b2 b3 b4 b5 b6 b7 b8 b9".split()
    unknown = set(chosen) - set(BENCHES) - set(SUBPROCESS_BENCHES)
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if "b1q" in chosen and not os.path.exists(QUIX_PYTHON):
        sys.exit(f"B1q needs Quix Streams in its own virtualenv ({QUIX_PYTHON}): run `make bench`")
    if "b1p" in chosen and not os.path.exists(b1p_module.PYSPY):
        sys.exit(f"B1p needs py-spy in its own virtualenv ({b1p_module.PYSPY}): `make profile`")
    asyncio.run(main(chosen))
