"""B9 (issue 25): what tier 0 saves, what it costs in agreement, and how fast the cheap tier
goes when it answers most records. One run, the real broker, the emulator's models (labels
and costs simulated).

The world (``tests/unit/tier0/worlds.py``'s generator, with a three-label task of its own):
300 templates of 12 words (``WORLD``); a request is, with probability ``WORLD.hard``, a fresh
random string, else a template (a repeat) with each word replaced with probability
``WORLD.edit``. The emulator answers a label set that is not its moderation one with a label
chosen by a hash of the whole text, cheap and strong models apart, and the cheap tier
escalates below its threshold (0.7): so an exact repeat always gets the same routed answer
(tier 0 can learn it), while an edited repeat and a fresh text get a label that nothing in the
text predicts (label noise, and hard texts: tier 0 cannot be perfect, and a certificate must
keep it off them).

1. The pipeline (both tiers, shadow off, no tier 0) answers ``TRAIN`` + ``CERT`` + ``TEST``
   requests, sent in that order.
2. ``escalator tier0 pairs`` joins the topics; ``tier0 train`` fits on the first window,
   ``tier0 certify`` certifies on the second (target ``TARGET``, delta 0.05).
3. The ``TEST`` texts again, under new ids, with the certified artefact
   (ESCALATOR_TIER0_FILE), once with its live test at its default (5% of its answers also
   asked of the cheap model) and once with it off: from each run's decisions log, cost per
   1,000 requests (every model call, the live test's included); tier 0's share; agreement of
   the routed answers with those without tier 0, text by text (the emulator answers a text
   the same way every time). The live test's reference is the final routed answer: a
   sampled answer the cheap model would escalate is asked of the strong model too
   (tier0/watch.py). In this world the cheap model escalates most texts; until 2026-12-07 such
   a sample counted as differing, which withdrew tier 0 (BENCHMARKS.md, B9).
4. Throughput: B1z's measurement with this artefact on ``THROUGHPUT`` world texts (tier 0
   answers most; the instant in-process model the rest), against B1's bare aiokafka pipe in the
   same run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from escalator.calibration.decisions_log import read_topic
from escalator.config import load_settings
from escalator.contract.messages import Attempt
from escalator.kafka.clients import make_producer
from escalator.model.prices import PriceTable
from escalator.model.task import Task
from tests.integration.harness import collect, make_env, running_service, setup_topics
from tests.unit.tier0.worlds import LABELS, World

WORLD = World("b9", hard=0.2, noise=0.0, edit=0.004, templates=300, words=12, seed=9)
TRAIN, CERT, TEST = 4000, 3000, 2000
TARGET, DELTA = 0.95, 0.05
THROUGHPUT = 30_000
TASK = {
    "name": "b9-tickets",
    "version": "1",
    "labels": list(LABELS),
    "instructions": "Label the support ticket as billing, other or spam.",
}


def _values(prefix: str, texts: list[str]) -> list[bytes]:
    return [orjson.dumps({"id": f"{prefix}-{i}", "text": t}) for i, t in enumerate(texts)]


def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``escalator ARGS`` in its own process: its exit code (0, or 3 for a refusal) and what
    it printed; any other exit is an error with what it said."""
    done = subprocess.run(
        [sys.executable, "-m", "escalator", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode not in (0, 3):
        raise RuntimeError(f"escalator {args[0]} {args[1]}: {done.stdout}{done.stderr}")
    return done.returncode, (done.stdout + done.stderr).strip()


def _reached(topic: str, prefix: str, n: int) -> Any:
    """``collect``'s condition: ``n`` distinct ids starting with ``prefix`` on ``topic``
    (each record parsed once)."""
    seen: set[str] = set()
    done = [0]

    def until(c: Any) -> bool:
        for r in c.records[done[0] :]:
            if r.topic == topic:
                rid = orjson.loads(r.value)["id"]
                if rid.startswith(prefix):
                    seen.add(rid)
        done[0] = len(c.records)
        return len(seen) >= n

    return until


async def _answer(env: dict[str, str], batches: list[tuple[str, list[str]]]) -> list[int]:
    """Run both tiers; send each batch (ids ``prefix-i``) once the previous one has all its
    results. Returns the moments (epoch ms) between batches."""
    bootstrap, results = env["KAFKA_BOOTSTRAP_SERVERS"], env["ESCALATOR_RESULTS_TOPIC"]
    splits: list[int] = []
    producer = make_producer(load_settings(env).kafka, linger_ms=5)
    await producer.start()
    try:
        async with running_service(env, ["cheap", "strong"]):
            for i, (prefix, texts) in enumerate(batches):
                if i:
                    splits.append(int(time.time() * 1000) + 1)
                    await asyncio.sleep(0.01)
                began = time.monotonic()
                values = _values(prefix, texts)
                await asyncio.gather(
                    *[await producer.send(env["ESCALATOR_REQUESTS_TOPIC"], v) for v in values]
                )
                await collect(
                    bootstrap, [results], _reached(results, f"{prefix}-", len(values)), 900
                )
                print(
                    f"    ({len(values):,} requests answered in {time.monotonic() - began:.0f} s)",
                    flush=True,
                )
    finally:
        await producer.stop()
    return splits


async def _outcome(env: dict[str, str], prefix: str, n: int) -> dict[str, Any]:
    """Per request ``prefix-i``: its routed label and tier (results) and the cost of every model
    call made for it (decisions log; tier 0's live-test samples included)."""
    settings = load_settings(env)
    topic = settings.topics.results
    got = await collect(
        env["KAFKA_BOOTSTRAP_SERVERS"], [topic], _reached(topic, f"{prefix}-", n), 120
    )
    ids = [f"{prefix}-{i}" for i in range(n)]
    wanted = set(ids)
    results = {k: v[0] for k, v in got.results_by_id(topic).items() if k in wanted}
    cost = dict.fromkeys(ids, 0.0)
    for d in await read_topic(settings.kafka, settings.topics.decisions):
        if d.id in cost:
            cost[d.id] += d.attempt.cost_usd
    return {
        "label": [results[i]["label"] for i in ids],
        "tier": [results[i]["tier"] for i in ids],
        "cost": np.asarray([cost[i] for i in ids]),
    }


async def _throughput(
    bootstrap: str, sim_url: str, artefact: Path, task_file: Path, report: Any
) -> None:
    """B1z's measurement, with the certified artefact on the world's texts."""
    from tests.benchmarks import run as bench

    texts, _ = WORLD.draw(THROUGHPUT, np.random.default_rng(99))
    envs = []
    for name in ("b9bare", "b9z"):
        env = make_env(
            bootstrap,
            sim_url,
            f"{name}{uuid.uuid4().hex[:6]}",
            ESCALATOR_TOPIC_PARTITIONS="6",
            ESCALATOR_TASK_FILE=str(task_file),
            ESCALATOR_TIER0_FILE=str(artefact),
            # Off: the instant model's constant answer would have its live test withdraw it.
            ESCALATOR_TIER0_SAMPLE_RATE="0",
        )
        await setup_topics(load_settings(env))
        producer = make_producer(load_settings(env).kafka, linger_ms=20)
        await producer.start()
        try:
            values = _values(name, texts)
            for start in range(0, len(values), 5000):
                await asyncio.gather(
                    *[
                        await producer.send(env["ESCALATOR_REQUESTS_TOPIC"], v)
                        for v in values[start : start + 5000]
                    ]
                )
        finally:
            await producer.stop()
        envs.append(env)
    base = await bench.bare_pipe(
        bootstrap,
        envs[0]["ESCALATOR_REQUESTS_TOPIC"],
        envs[0]["ESCALATOR_RESULTS_TOPIC"],
        THROUGHPUT,
    )
    asked: list[int] = []

    class Instant(bench.InstantModel):
        async def classify(self, text: str) -> Attempt:
            asked.append(1)
            return Attempt(self.tier, self.model, "other", 0.95, True, 90, 10, 0, 1290, 2.8e-5, 0.0)

    def factory(tier: str, model: str, task: Task, prices: PriceTable) -> Instant:
        return Instant(tier, model)

    ours = await bench.run_pipeline(envs[1], THROUGHPUT, factory)
    share = 1 - len(asked) / THROUGHPUT
    report(
        "B9",
        f"bare aiokafka pipe {base:,.0f} msg/s; cheap tier with the certified tier 0 answering "
        f"{share:.1%} of {THROUGHPUT:,} world records (its live test off), the instant fake "
        f"model the rest, {ours:,.0f} msg/s",
        f"ratio {ours / base:.2f}",
        "measured (issue 25: the pipeline is the limit)",
    )


async def b9(bootstrap: str, sim_url: str, tmp: Path, report: Any) -> None:
    rng = np.random.default_rng(2025)
    texts, _ = WORLD.draw(TRAIN + CERT + TEST, rng)
    task_file = tmp / "b9-task.json"
    task_file.write_bytes(orjson.dumps(TASK))
    unique = f"b9{uuid.uuid4().hex[:6]}"
    env = make_env(
        bootstrap,
        sim_url,
        unique,
        ESCALATOR_TASK_FILE=str(task_file),
        ESCALATOR_SHADOW_RATE="0",
        ESCALATOR_LOG_LEVEL="WARNING",
    )
    await setup_topics(load_settings(env))
    train_t, cert_t, test_t = texts[:TRAIN], texts[TRAIN : TRAIN + CERT], texts[TRAIN + CERT :]
    split1, split2 = await _answer(env, [("a", train_t), ("c", cert_t), ("t", test_t)])
    pairs, artefact = tmp / "b9-pairs.jsonl", tmp / "b9-tier0.json"
    _cli(env, "tier0", "pairs", "--output", str(pairs))
    for args in (
        ("train", "--input", str(pairs), "--until", str(split1), "--output", str(artefact)),
        ("certify", "--input", str(pairs), "--artefact", str(artefact), "--since", str(split1),
         "--until", str(split2), "--target", str(TARGET), "--delta", str(DELTA),
         "--ledger", str(tmp / "b9-ledger.jsonl")),
    ):  # fmt: skip
        code, said = _cli(env, "tier0", *args)
        print("\n".join(f"    {line}" for line in said.splitlines() if line.strip()), flush=True)
    if code != 0:
        report("B9", f"tier 0 refused certification at target {TARGET:.0%}", "refused", "-")
        return
    manifest = orjson.loads(artefact.read_bytes())
    est = manifest["certification"]["estimates"]
    print(
        f"    (world: {WORLD.templates} templates of {WORLD.words} words, {WORLD.hard:.0%} fresh "
        f"texts, edit {WORLD.edit} per word; trained on {TRAIN:,} answers, certified on "
        f"{CERT:,}: threshold {manifest['threshold']:.2f}, answers {est['answered_share']:.1%}"
        f", agreement lower bound {est['agreement']['lower_bound']:.2%})",
        flush=True,
    )
    without = await _outcome(env, "t", TEST)
    per_1k = 1000 * float(without["cost"].mean())
    report(
        "B9",
        f"without tier 0: {TEST:,} later requests of the world, both tiers, threshold 0.7 "
        f"(simulated)",
        f"${per_1k:.4f} per 1,000 requests; agreement 100% (the reference)",
        "reference",
    )
    for prefix, rate in (("w", None), ("u", "0")):
        with_env = {**env, "ESCALATOR_TIER0_FILE": str(artefact)}
        if rate is not None:
            with_env["ESCALATOR_TIER0_SAMPLE_RATE"] = rate
        await _answer(with_env, [(prefix, test_t)])
        with_ = await _outcome(with_env, prefix, TEST)
        local = [i for i, t in enumerate(with_["tier"]) if t == "tier0"]
        agree = np.mean([a == b for a, b in zip(with_["label"], without["label"], strict=True)])
        among = np.mean([with_["label"][i] == without["label"][i] for i in local] or [1.0])
        cost = 1000 * float(with_["cost"].mean())
        watch = (
            "its live test off (ESCALATOR_TIER0_SAMPLE_RATE=0)"
            if rate is not None
            else "its live test on (5% of its answers also asked of the cheap model, and of "
            "the strong one where the cheap would escalate; included)"
        )
        report(
            "B9",
            f"with tier 0 certified at {TARGET:.0%} (threshold {manifest['threshold']:.2f}), "
            f"{watch}: the same {TEST:,} texts; tier 0 answered {len(local) / TEST:.1%} (its "
            f"own answers agree {among:.1%}) (simulated)",
            f"${cost:.4f} per 1,000 requests (saves {1 - cost / per_1k:.1%}); agreement "
            f"{agree:.2%}",
            f"agreement >= {TARGET:.0%} (certified)",
        )
    await _throughput(bootstrap, sim_url, artefact, task_file, report)
