"""``escalator demo``: the whole round trip on embedded defaults.

It uses ``KAFKA_BOOTSTRAP_SERVERS`` or starts a local broker; the real API when
``ANTHROPIC_API_KEY`` is set, else the simulator in its own process. It creates fresh topics,
runs both tiers in this process, publishes a sample of real human-labelled texts (PyRIT's harm
evaluations, see datasets.py), shows live progress, and ends with a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from escalator.cli._common import fraction, integer, number
from escalator.config import Settings, load_settings
from escalator.contract.messages import DeadLetterInfo
from escalator.errors import EscalatorError
from escalator_dev import datasets, demo_lane, demo_tier0
from escalator_dev.emulator import server as sim
from escalator_dev.kafka_local import LocalKafkaCluster, cache_root, kafka_version_from_log


@dataclass
class Tally:
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    adjudicated: int = 0
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
        ("ESCALATOR_REVIEWS_TOPIC", "reviews"),
        ("ESCALATOR_ADJUDICATIONS_TOPIC", "adjudications"),
    ):
        env[var] = f"escalator.{suffix}.{name}"
    env["ESCALATOR_CHEAP_GROUP"] = f"escalator-cheap-{suffix}"
    env["ESCALATOR_STRONG_GROUP"] = f"escalator-strong-{suffix}"
    env["ESCALATOR_REVIEW_GROUP"] = f"escalator-review-{suffix}"
    env.setdefault("ESCALATOR_METRICS_PORT", "0")
    env.setdefault("ESCALATOR_LOG_LEVEL", "WARNING")
    return env, broker, simulated


def cmd_demo(args: argparse.Namespace) -> int:
    wheel = datasets.fetch_pyrit_wheel()
    pool = datasets.sample(datasets.load_harm_samples(wheel), 3 * args.count)
    if len(pool) < 3 * args.count:
        raise EscalatorError(
            f"--count {args.count}: the dataset has {len(pool)} texts, enough for --count "
            f"{len(pool) // 3} at most (three phases)"
        )
    n = args.count
    measure, rollout, people = pool[:n], pool[n : 2 * n], pool[2 * n :]
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "PYRIT-LICENSE.txt").write_text(datasets.license_notice(wheel))
    with ExitStack() as stack:
        env, broker, simulated = _environment(stack, args)
        from escalator.observability import logs

        logs.configure(env["ESCALATOR_LOG_LEVEL"])
        # A fresh broker answers "coordinator not available" for a moment; aiokafka retries
        # and logs each at ERROR. The demo's own summary reports anything that matters.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        tag = " [simulated]" if simulated else ""
        settings = load_settings({**env, "ESCALATOR_SHADOW_RATE": "1"})
        print(
            f"broker: {broker}; models: {settings.model.cheap_model} -> "
            f"{settings.model.strong_model}{' (SIMULATED models)' if simulated else ''}"
        )
        print(
            f"texts: {len(pool)} human-labelled responses from pyrit {datasets.PYRIT_VERSION} "
            "(MIT licence, Microsoft; scorer_evals/harm)\n"
        )

        print(
            f"Phase 1: measure. {len(measure)} requests, threshold "
            f"{settings.routing.threshold}, every accepted request also shadowed (p=1)."
        )
        tally, elapsed = asyncio.run(_round_trip(settings, measure))
        _summary(settings, measure, tally, elapsed, simulated)
        before = asyncio.run(_decisions(settings, measure))

        print("\nPhase 2: calibrate on the phase-1 decisions log.")
        result, _ = _calibrate(before, args.target, out_dir)
        print(
            f"\nPhase 3: run with the calibrated thresholds on {len(rollout)} new requests "
            "(still shadowed, so that agreement can be measured; shadow spend is reported "
            "apart)."
        )
        settings = load_settings(
            {
                **env,
                "ESCALATOR_SHADOW_RATE": "1",
                "ESCALATOR_THRESHOLDS_FILE": str(out_dir / "thresholds.json"),
            }
        )
        tally, elapsed = asyncio.run(_round_trip(settings, rollout))
        _summary(settings, rollout, tally, elapsed, simulated)
        after = asyncio.run(_decisions(settings, rollout))
        rollout_accuracy = _accuracy(tally, rollout)

        print(f"\nBefore and after{tag}:")
        _compare("before: threshold 0.70 (phase 1)", before, 0.7)
        after_t = "all" if result.threshold > 1 else f"{result.threshold:.2f}"
        _compare(f"after:  threshold {after_t} (phase 3)", after, result.threshold)
        _what_it_measures(before, after, result.threshold, args.target)
        if args.lane_batch_s:
            thresholds = out_dir / "thresholds.json"
            lane_s = args.lane_batch_s
            demo_lane.lane_phase(env, rollout, tally, thresholds, lane_s, simulated, _round_trip)

        print(
            f"\nPhase 4: the human tier, on {len(people)} new requests. The strong tier hands "
            f"a request to people below confidence {args.strong_threshold:.2f}, or when it says "
            "review-needed or refuses; half the disagreeing and a tenth of the agreeing "
            "answers are also sampled for adjudication. The reviewer is SIMULATED: it answers "
            "each item with the dataset's human label (the mean of PyRIT's human scores)."
        )
        settings = load_settings(
            {
                **env,
                "ESCALATOR_SHADOW_RATE": "1",
                "ESCALATOR_THRESHOLDS_FILE": str(out_dir / "thresholds.json"),
                "ESCALATOR_HUMAN_TIER": "on",
                "ESCALATOR_STRONG_THRESHOLD": str(args.strong_threshold),
                "ESCALATOR_ADJUDICATE_DISAGREE": "0.5",
                "ESCALATOR_ADJUDICATE_AGREE": "0.1",
            }
        )
        gold = {s.id: s.gold_label for s in people}
        tally, elapsed = asyncio.run(_round_trip(settings, people, reviewer=gold))
        _summary(settings, people, tally, elapsed, simulated)
        reviewed = sum(1 for r in tally.results.values() if r["tier"] == "human")
        print(
            f"  reviewed by people: {reviewed} results ({reviewed / max(1, len(people)):.1%}), "
            f"plus {tally.adjudicated} adjudication items (measurement only)"
        )
        _calibrate_on_people(settings, people, out_dir, simulated)
        print(f"\nAccuracy against people, on phase 4's {len(people)} requests{tag}:")
        print(
            f"  before: the models alone (the strong answer final):  "
            f"{_accuracy(tally, people, models_only=True):.1%}"
        )
        print(
            f"  after:  with the human tier:                          "
            f"{_accuracy(tally, people):.1%} ({reviewed} decided by the simulated reviewer)"
        )
        print(f"  (phase 3, other requests, models alone: {rollout_accuracy:.1%})")
        demo_tier0.phase(env, out_dir, pool, _round_trip, simulated)
        print(
            f"\nthreshold file: {out_dir / 'thresholds.json'}; plot: {out_dir / 'calibration.png'}"
            f"; PyRIT licence notice: {out_dir / 'PYRIT-LICENSE.txt'}"
        )
    return 0


async def _decisions(settings: Settings, samples: list[datasets.Sample]) -> Any:
    """The phase's decisions, once every request has its cheap and strong answers logged."""
    from escalator.calibration.dataset import pair_decisions
    from escalator.calibration.decisions_log import read_topic

    wanted = {s.id for s in samples}
    deadline = time.monotonic() + 300
    while True:
        records = [
            r for r in await read_topic(settings.kafka, settings.topics.decisions) if r.id in wanted
        ]
        strong = {r.id for r in records if r.tier == "strong"}
        if strong >= wanted or time.monotonic() > deadline:
            return pair_decisions(records)
        await asyncio.sleep(0.5)


def _calibrate(data: Any, target: float, out_dir: Path) -> tuple[Any, str]:
    """Certify a threshold on phase 1 (one attempt at delta 0.05), print the outcome and the
    plan for measuring in production; on a refusal, phase 3 escalates everything."""
    from escalator.calibration import curves, sizing
    from escalator.calibration import search as cal
    from escalator.calibration.render import guarantee, plan_table, plot, refusal
    from escalator.calibration.threshold_file import threshold_body, write_threshold_file
    from escalator.model.prices import load_prices

    delta = 0.05
    result = cal.calibrate(data, objective="quality", target=target, delta=delta)
    base = curves.baselines(data, float(result.curve.escalation[result.chosen]))
    c = result.curve
    if result.status == "certified":
        i = result.chosen
        print(
            f"  certified threshold {result.threshold:.2f}: escalates {c.escalation[i]:.1%}, "
            f"agreement {c.agreement[i]:.1%} (lower bound {c.agreement_lower[i]:.1%}); "
            f"best by estimate t={c.thresholds[result.best]:.2f}\n  {guarantee(result, delta)}"
        )
    else:
        print("  " + refusal(result, sizing.needed(data, result, delta)))
        print("  phase 3 falls back to escalating everything (--fallback escalate-all)")
    window = {
        "first_ts_ms": int(data.ts_ms.min()),
        "last_ts_ms": int(data.ts_ms.max()),
    }
    body = threshold_body(
        result,
        data,
        source="escalator demo, phase 1",
        delta=delta,
        window=window,
        price_table_version=load_prices(None).version,
        base=base,
        detail=False,
    )
    version = write_threshold_file(out_dir / "thresholds.json", body)
    print(f"  thresholds version {version}")
    call = float(data.strong_cost[data.answered].mean()) if data.answered.any() else None
    table = plan_table(data, result, call_usd=call, delta=delta, power=0.8, assume_threshold=0.7)
    print("\n  Measuring this in production at threshold 0.7 (phase 1 as the pilot):")
    print("  " + table.replace("\n", "\n  "))
    print("  " + plot(out_dir / "calibration.png", result, base))
    return result, version


def _compare(name: str, data: Any, threshold: float) -> None:
    """Routed cost and agreement at the threshold in force, measured on that phase's traffic
    with the calibrator's estimators."""
    from escalator.calibration.curves import curve

    c = curve(data, [threshold])
    acc = "" if c.accuracy is None else f", accuracy vs human labels {c.accuracy[0]:.1%}"
    print(
        f"  {name}: escalated {c.escalation[0]:.1%}, agreement with the strong model "
        f"{c.agreement[0]:.1%} (lower bound {c.agreement_lower[0]:.1%}){acc}, "
        f"${c.cost_per_1k[0]:.4f} per 1,000 requests"
    )


def _what_it_measures(before: Any, after: Any, threshold: float, target: float) -> None:
    """Lines under the before/after table: what calibration targets, and why accuracy against
    people need not follow it here (how good the strong model itself is on these texts, and
    how far apart two samples of this size can land)."""
    from escalator.calibration.curves import curve
    from escalator.calibration.dataset import STRONG_ONLY

    alone = curve(before, [0.0, STRONG_ONLY]).accuracy
    same = curve(after, [0.7, threshold]).accuracy
    if alone is None or same is None:
        return
    n = max(1, int(after.n))
    noise = 2 * (0.5 / n) ** 0.5  # two standard errors of a difference of two shares near 50%
    print(
        f"  Calibration certifies agreement with the strong model (>= {target:.0%}), not "
        "accuracy against people.\n"
        f"  On these texts the strong model matches the human labels {alone[1]:.1%} of the "
        f"time, the cheap one {alone[0]:.1%}\n"
        "  (phase 1): escalating more cannot gain much. And before and after are different "
        "texts: on phase 3's\n"
        f"  own texts threshold 0.70 would score {same[0]:.1%} and {threshold:.2f} scores "
        f"{same[1]:.1%}; two samples of {n} can differ\n"
        f"  by about {noise * 100:.0f} points by chance. Accuracy against people is what phase 4 "
        "and `calibrate --objective human` target."
    )


def _calibrate_on_people(
    settings: Settings, samples: list[datasets.Sample], out_dir: Path, simulated: bool
) -> None:
    """Phase 4's decisions log, with the (simulated) people's labels, through
    ``escalator calibrate --objective human`` and ``escalator report --review-cost``."""
    from escalator.calibration.decisions_log import read_topic, write_jsonl
    from escalator.cli.main import main as cli

    wanted = {s.id for s in samples}
    records = [
        r
        for r in asyncio.run(read_topic(settings.kafka, settings.topics.decisions))
        if r.id in wanted
    ]
    path = out_dir / "decisions-phase4.jsonl"
    with path.open("wb") as f:
        write_jsonl(records, f)
    tag = " [simulated: the people are the dataset's labels]" if simulated else ""
    print(
        f"\nCalibration on human truth{tag}: escalator calibrate --input {path} "
        "--objective human --target 0.75 --human-budget 0.5"
    )
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        code = cli(
            [
                "calibrate",
                "--input",
                str(path),
                "--objective",
                "human",
                "--target",
                "0.75",
                "--human-budget",
                "0.5",
                "--review-cost",
                "0.25",
                "--output",
                str(out_dir / "thresholds-human.json"),
            ]
        )
    for line in said.getvalue().splitlines():  # the CLI's own reason, whatever it is
        print(f"  {'refused' if code == 3 else 'said'}: {line}")
    print(f"\nThree-tier cost{tag}: escalator report --input {path} --review-cost 0.25")
    cli(["report", "--input", str(path), "--review-cost", "0.25"])


def _accuracy(tally: Tally, samples: list[datasets.Sample], models_only: bool = False) -> float:
    """Results whose label is the dataset's human label. ``models_only``: for a request a
    person decided, count the strong model's answer instead (what it would have been)."""
    gold = {s.id: s.gold_label for s in samples}
    results = tally.results.values()

    def label(r: dict[str, Any]) -> Any:
        if models_only and r["tier"] == "human":
            return next(a["label"] for a in r["attempts"] if a["tier"] == "strong")
        return r["label"]

    return sum(1 for r in results if label(r) == gold.get(r["id"])) / max(1, len(results))


async def _simulated_reviewer(queues: Any, gold: dict[str, str], tally: Tally) -> None:
    """Decides every item of both queues with the dataset's human label (SIMULATED person)."""
    while True:
        busy = False
        for queue in ("review", "adjudication"):
            lease = queues.lease(queue, "simulated-reviewer")
            if lease is None:
                continue
            busy = True
            label = gold.get(lease.item.request.id)
            outcome = await queues.decide(lease.id, "simulated-reviewer", label, None)
            if outcome == "done" and queue == "adjudication":
                tally.adjudicated += 1
        if not busy:
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _simulated_people(
    settings: Settings, gold: dict[str, str], tally: Tally
) -> AsyncIterator[None]:
    """The review queues with the simulated reviewer deciding them, while the block runs."""
    from escalator.observability.metrics import Metrics
    from escalator.review.assemble import build_console

    # Its own health port (any free one): the tiers' service in this process has the other.
    console = build_console(dataclasses.replace(settings, metrics_port=0), Metrics())
    async with console.service:
        reviewer = asyncio.create_task(_simulated_reviewer(console.queues, gold, tally))
        try:
            yield
        finally:
            reviewer.cancel()
            await asyncio.gather(reviewer, return_exceptions=True)


async def _round_trip(
    settings: Settings, samples: list[datasets.Sample], reviewer: dict[str, str] | None = None
) -> tuple[Tally, float]:
    from escalator.app import build_service
    from escalator.kafka.clients import Outgoing, create_topics, make_consumer, produce_and_await

    await create_topics(settings.kafka, settings.topics.all(), settings.topic_partitions, 1)
    service = build_service(settings, ["cheap", "strong"])
    run = asyncio.create_task(service.run(install_signals=False))
    tally = Tally()
    people = contextlib.AsyncExitStack()
    if reviewer is not None:
        await people.enter_async_context(_simulated_people(settings, reviewer, tally))
    watcher = make_consumer(settings.kafka, f"demo-watch-{uuid.uuid4().hex[:6]}")
    watcher.subscribe([settings.topics.results, settings.topics.dead_letter])
    await watcher.start()
    sent_ms: dict[str, float] = {}

    def outgoing() -> Iterator[Outgoing]:
        for s in samples:
            value = orjson.dumps(
                {
                    "id": s.id,
                    "text": s.text,
                    "metadata": {"gold_label": s.gold_label, "source": s.source},
                }
            )
            sent_ms[s.id] = time.time() * 1000
            yield settings.topics.requests, s.id.encode(), value, []

    started = time.monotonic()
    try:
        await produce_and_await(settings.kafka, outgoing())
        last_print = 0.0
        wanted = {s.id for s in samples}
        while len(tally.results) + sum(tally.dead_letters.values()) < len(samples):
            if run.done():
                run.result()
                raise EscalatorError("the service stopped before finishing the demo")
            if time.monotonic() - started > 600:
                raise EscalatorError("demo timed out after 600 s")
            batch = await watcher.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    _count(settings, tally, r, sent_ms, wanted)
            if time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                _progress(tally, len(samples))
        _progress(tally, len(samples))
        print(file=sys.stderr)
    finally:
        elapsed = time.monotonic() - started
        await watcher.stop()
        await people.aclose()
        service.stop()
        await run
    return tally, elapsed


def _count(
    settings: Settings, tally: Tally, record: Any, sent_ms: dict[str, float], wanted: set[str]
) -> None:
    if record.topic == settings.topics.dead_letter:
        if (record.key or b"").decode("utf-8", "replace") not in wanted:
            return  # an earlier phase's dead letter
        tally.dead_letters[DeadLetterInfo.from_headers(record.headers).reason] += 1
        return
    result = orjson.loads(record.value)
    rid = result["id"]
    if rid not in wanted:
        return  # an earlier phase's result
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
    human = sum(1 for r in results if r["tier"] == "human")
    print(f"  decided at strong tier ({settings.model.strong_model}): {len(escalated) - human}")
    if human:
        print(f"  decided by people (human tier): {human}")
    versions = sorted({r["threshold_version"] for r in results})
    print(f"  escalation rate: {len(escalated) / max(1, n):.1%} (thresholds {', '.join(versions)})")
    print(f"  accuracy against human labels: {correct / max(1, n):.1%}")
    refused = Counter(
        str(r.get("refusal_category"))
        for r in results
        if r.get("refusal_category") is not None and r["tier"] != "human"
    )
    refused_to_people = sum(
        1 for r in results if r["tier"] == "human" and r.get("review_reason") == "strong_refused"
    )
    cheap_refused = sum(1 for r in results if r.get("escalation_reason") == "cheap_refused")
    if refused or cheap_refused:
        print(
            f"  refusals: {cheap_refused} escalated as cheap_refused; {sum(refused.values())} "
            f"decided by the task's refusal_label {dict(refused)}"
            + (f"; {refused_to_people} handed to people" if refused_to_people else "")
            + tag
        )
    print(
        f"  cost of decisions: ${cost:.6f} for {n} requests (${1000 * cost / max(1, n):.5f} "
        f"per 1k; shadow calls not included){tag}"
    )
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
    demo.add_argument(
        "--count", type=integer(30, 100_000), default=300, help="texts per phase (default 300)"
    )
    demo.add_argument(
        "--target",
        type=number(0.0, 1.0, lo_open=True, hi_open=True),
        default=0.90,
        help="agreement that calibration must certify (delta 0.05; the simulated cheap model "
        "agrees about 80%% at threshold 0.7)",
    )
    demo.add_argument(
        "--strong-threshold",
        type=fraction,
        default=0.8,
        help="phase 4: the strong tier hands answers below this confidence to people",
    )
    demo.add_argument(
        "--output-dir",
        default="demo-output",
        help="where the threshold files, the plot and the decisions log go (default demo-output)",
    )
    demo_lane.add_arguments(demo)
    demo.set_defaults(func=cmd_demo)
