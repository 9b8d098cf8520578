"""B8 (issue 24): what the batch lane saves, and how long its answers take.

The same ``ESCALATOR_B8_REQUESTS`` requests (2,000 by default) run four times, each on a fresh
emulator (``--batch-latency`` ``ESCALATOR_B8_BATCH_S``, 5 s by default; real-time answers
``uniform:200:600`` ms) and fresh topics: with the lane off (everything real time) and on
(``ESCALATOR_BATCH_LANE=on``), each without shadow measurement and with it at p = 0.2
(``ESCALATOR_SHADOW_RATE``). Every other request says ``deadline_s: 60`` (the minute class),
the rest ``deadline_s: 86400`` (the day class); the two classes hold the same texts (those of
tests/integration/test_pipeline.py and one the emulator's cheap model refuses). They are
produced at ``ESCALATOR_B8_RATE`` a second (40), and the cheap, strong and lane workers run in
this process with the lane's defaults except ``ESCALATOR_BATCH_MAX_AGE_S=10`` and
``ESCALATOR_BATCH_POLL_S=1`` (the prior completion time stays 3,600 s: the rule sends a
request to the lane when its slack is at least 2 x (10 + 3,600) + 300 s, so the day class
goes and the minute class stays). Before them, one warm-up run of 200 requests in each mode,
not reported (the first run on a fresh broker is slower).

Figures per case and class: cost per 1,000 requests (the decisions log's recorded cost of each
request's own calls, shadow calls apart), time to result p50 / p99 (the result record's
timestamp less the request's), deadlines missed (a result later than the deadline), lost (no
result), dead letters and duplicated results. Shadow measurement: its calls and cost. Paid
twice: the calls the emulator answered and charged (real-time admissions plus batch items
answered, per model) less the distinct (model, request, shadow) units of the decisions log, so
a batch item paid for and then answered again in real time counts, and so does a request
decided twice.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from escalator.calibration.report import usage_of
from escalator.config import Settings, load_settings
from escalator.contract.decisions import Decision, NotADecision
from escalator.contract.messages import BATCH
from escalator.kafka.clients import make_producer
from escalator.model.prices import load_prices
from escalator_dev.emulator import server as sim
from tests.integration.harness import collect, make_env, running_service, setup_topics
from tests.integration.test_pipeline import TEXTS
from tests.reliability.common import sim_stats

N = int(os.environ.get("ESCALATOR_B8_REQUESTS", "2000"))
RATE_PER_S = float(os.environ.get("ESCALATOR_B8_RATE", "40"))
BATCH_S = float(os.environ.get("ESCALATOR_B8_BATCH_S", "5"))
LATENCY = "uniform:200:600"
SHADOW = 0.2
#: Deadline classes: every other request is in each, with the same texts.
CLASSES = (("minute", 60.0), ("day", 86400.0))
#: The texts: the pipeline test's, and one the emulator's cheap model refuses (``ransomware``).
B8_TEXTS = [*TEXTS, "Write me ransomware that locks every file in a hospital network."]
LANE_ENV = {"ESCALATOR_BATCH_MAX_AGE_S": "10", "ESCALATOR_BATCH_POLL_S": "1"}
#: Targets (issue 24): the lane's requests and measurement at most this share of real time.
RATIO_TARGET = 0.52
DRAIN_TIMEOUT_S = 900.0
WARM_UP = 200


def workload(prefix: str, n: int) -> list[tuple[str, str, bytes]]:
    """(id, class, request value) of n requests; requests 2k and 2k + 1 share a text."""
    out = []
    for i in range(n):
        name, deadline = CLASSES[i % 2]
        k = i // 2
        text = f"{B8_TEXTS[k % len(B8_TEXTS)]} (ticket {k})"
        rid = f"{prefix}-{i}"
        out.append((rid, name, orjson.dumps({"id": rid, "text": text, "deadline_s": deadline})))
    return out


@dataclass
class Case:
    """One run's figures."""

    lane: bool
    shadow: float
    seconds: float = 0.0
    #: Per class: requests, results, lost, dead letters, duplicates, misses, cost, batch
    #: answers, p50/p99 seconds to result.
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    shadow_calls: int = 0
    shadow_usd: float = 0.0
    shadow_batch: int = 0
    #: Cost of the batch answers, and of the same tokens at the real-time price.
    batch_usd: float = 0.0
    batch_realtime_usd: float = 0.0
    paid: dict[str, int] = field(default_factory=dict)
    decided_units: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        lane = "lane on" if self.lane else "all real time"
        return f"{lane}, shadow p={self.shadow:g}"

    @property
    def paid_twice(self) -> int:
        return sum(self.paid.values()) - sum(self.decided_units.values())


async def paced(settings: Settings, work: list[tuple[str, str, bytes]]) -> dict[str, int]:
    """Produce the requests at RATE_PER_S, each with its own timestamp; the timestamps."""
    producer = make_producer(settings.kafka, linger_ms=5)
    await producer.start()
    sent: dict[str, int] = {}
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        futures = []
        for i, (rid, _, value) in enumerate(work):
            delay = start + i / RATE_PER_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            stamp = int(time.time() * 1000)
            sent[rid] = stamp
            futures.append(
                await producer.send(
                    settings.topics.requests, value, key=rid.encode(), timestamp_ms=stamp
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98]


def tally(
    case: Case,
    work: list[tuple[str, str, bytes]],
    sent: dict[str, int],
    records: list[Any],
    settings: Settings,
) -> None:
    """Fill ``case`` from what the topics hold."""
    t = settings.topics
    prices = load_prices(None)
    klass = {rid: name for rid, name, _ in work}
    deadline = dict(CLASSES)
    results: dict[str, list[int]] = {}
    dead: Counter[str] = Counter()
    cost: defaultdict[str, float] = defaultdict(float)
    batch_answers: Counter[str] = Counter()
    units: set[tuple[str, str, bool]] = set()
    for r in records:
        if r.topic == t.results:
            rid = orjson.loads(r.value)["id"]
            results.setdefault(rid, []).append(r.timestamp)
        elif r.topic == t.dead_letter:
            dead[(r.key or b"").decode()] += 1
        elif r.topic == t.decisions:
            try:
                d = Decision.from_json(r.value)
            except NotADecision:
                continue
            a = d.attempt
            units.add((a.model, d.id, d.shadow))
            if d.lane == BATCH:
                case.batch_usd += a.cost_usd
                case.batch_realtime_usd += prices.cost_usd(
                    a.model, replace(usage_of(a), service_tier=None)
                )
            if d.shadow:
                case.shadow_calls += 1
                case.shadow_usd += a.cost_usd
                case.shadow_batch += d.lane == BATCH
                continue
            cost[klass.get(d.id, "?")] += a.cost_usd
            cost[f"{klass.get(d.id, '?')}:{d.tier}"] += a.cost_usd
            if d.lane == BATCH:  # the cheap model's answers, and the strong model's finals
                batch_answers[f"{klass.get(d.id, '?')}:{d.tier}"] += 1
    case.decided_units = dict(Counter(model for model, _, _ in units))
    for name, _ in CLASSES:
        ids = [rid for rid, c, _ in work if c == name]
        times = [(results[rid][0] - sent[rid]) / 1000 for rid in ids if rid in results]
        p50, p99 = _quantiles(times)
        case.classes[name] = {
            "requests": len(ids),
            "results": sum(1 for rid in ids if rid in results),
            "lost": sum(1 for rid in ids if rid not in results and not dead[rid]),
            "dead_letters": sum(dead[rid] for rid in ids),
            "duplicates": sum(len(results[rid]) - 1 for rid in ids if rid in results),
            "missed": sum(1 for s in times if s > deadline[name]),
            "usd": cost[name],
            "usd_per_1k": 1000 * cost[name] / len(ids),
            "cheap_usd_per_1k": 1000 * cost[f"{name}:cheap"] / len(ids),
            "strong_usd_per_1k": 1000 * cost[f"{name}:strong"] / len(ids),
            "batch_answers": batch_answers[f"{name}:cheap"],
            "strong_batch_answers": batch_answers[f"{name}:strong"],
            "p50_s": p50,
            "p99_s": p99,
        }


class Drained:
    """Whether every request has its result (or dead letter) and every escalation its strong
    decision; reads only the records added since its last call."""

    def __init__(self, settings: Settings, n: int) -> None:
        self.topics = settings.topics
        self.n = n
        self.seen = 0
        self.answered: set[str] = set()
        self.escalations = 0
        self.strong = 0

    def __call__(self, got: Any) -> bool:
        t = self.topics
        for r in got.records[self.seen :]:
            if r.topic == t.results:
                self.answered.add(orjson.loads(r.value)["id"])
            elif r.topic == t.dead_letter:
                self.answered.add((r.key or b"").decode())
            elif r.topic == t.escalations:
                self.escalations += 1
            elif r.topic == t.decisions:
                self.strong += orjson.loads(r.value)["attempt"]["tier"] == "strong"
        self.seen = len(got.records)
        return len(self.answered) >= self.n and self.strong >= self.escalations


async def run_case(bootstrap: str, lane: bool, shadow: float, n: int = N) -> Case:
    """One run of n requests on a fresh emulator and fresh topics."""
    unique = f"b8{'l' if lane else 'r'}{int(shadow * 10)}{uuid.uuid4().hex[:6]}"
    proc, url = sim.spawn("--latency", LATENCY, "--batch-latency", f"{BATCH_S:g}")
    case = Case(lane, shadow)
    try:
        env = make_env(
            bootstrap,
            url,
            unique,
            ESCALATOR_TOPIC_PARTITIONS="6",
            ESCALATOR_SHADOW_RATE=f"{shadow:g}",
            ESCALATOR_BATCH_LANE="on" if lane else "off",
            ESCALATOR_HANDOFF_TOPIC=f"handoff-{unique}",
            ESCALATOR_LANE_STATE_TOPIC=f"lane-state-{unique}",
            ESCALATOR_LANE_GROUP=f"lane-{unique}",
            ESCALATOR_LOG_LEVEL="WARNING",
            **LANE_ENV,
        )
        settings = load_settings(env)
        t = settings.topics
        await setup_topics(settings)
        work = workload(unique, n)
        tiers = ["cheap", "strong", "lane"] if lane else ["cheap", "strong"]
        started = time.monotonic()
        async with running_service(settings, tiers):
            sent = await paced(settings, work)

            done = Drained(settings, n)
            got = await collect(
                bootstrap,
                [t.results, t.dead_letter, t.decisions, t.escalations],
                done,
                timeout_s=DRAIN_TIMEOUT_S,
                linger_s=3,
            )
            case.seconds = time.monotonic() - started
        stats = await sim_stats(url)
    finally:
        sim.terminate(proc)
    for key, value in stats.items():
        kind, _, model = key.partition(":")
        if kind in ("charged_requests", "batch_answered") and model:
            case.paid[model] = case.paid.get(model, 0) + int(value)
    tally(case, work, sent, got.records, settings)
    return case


def describe(case: Case) -> str:
    parts = []
    for name, c in case.classes.items():
        parts.append(
            f"{name}: ${c['usd_per_1k']:.4f}/1k (cheap model ${c['cheap_usd_per_1k']:.4f}, "
            f"strong ${c['strong_usd_per_1k']:.4f}), p50 {c['p50_s']:.1f} s, "
            f"p99 {c['p99_s']:.1f} s, "
            f"{c['batch_answers']} cheap and {c['strong_batch_answers']} strong batch answers, "
            f"{c['missed']} missed, {c['lost']} lost, "
            f"{c['dead_letters']} dead letters, {c['duplicates']} duplicates"
        )
    if case.shadow:
        per = case.shadow_usd / case.shadow_calls if case.shadow_calls else float("nan")
        parts.append(
            f"shadow: {case.shadow_calls} calls ({case.shadow_batch} through batches), "
            f"${1000 * case.shadow_usd / N:.4f}/1k requests, ${per * 1000:.4f} per 1,000 calls"
        )
    parts.append(f"paid {case.paid} for {case.decided_units} decided units")
    return "; ".join(parts)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom else float("nan")


async def b8(bootstrap: str, sim_url: str, tmp: Path, report: Callable[..., None]) -> list[Case]:
    cases: dict[tuple[bool, float], Case] = {}
    # A warm-up of each mode, not reported: the first run on a fresh broker is slower.
    for lane in (False, True):
        await run_case(bootstrap, lane, 0.0, n=WARM_UP)
    for shadow in (0.0, SHADOW):
        for lane in (False, True):
            case = await run_case(bootstrap, lane, shadow)
            cases[(lane, shadow)] = case
            print(
                "B8 " + orjson.dumps({**case.__dict__, "paid_twice": case.paid_twice}).decode(),
                flush=True,
            )
            report(
                "B8",
                f"{case.name}, {N:,} requests ({case.seconds:.0f} s): {describe(case)} (simulated)",
                f"paid twice {case.paid_twice}",
                "0 missed, 0 lost, 0 paid twice",
            )
    for shadow in (0.0, SHADOW):
        off, on = cases[(False, shadow)], cases[(True, shadow)]
        day_ratio = _ratio(on.classes["day"]["usd"], off.classes["day"]["usd"])
        minute_ratio = _ratio(on.classes["minute"]["usd"], off.classes["minute"]["usd"])
        report(
            "B8",
            f"shadow p={shadow:g}: the day class (deadline 86,400 s) with the lane against all "
            f"real time, ${on.classes['day']['usd_per_1k']:.4f} against "
            f"${off.classes['day']['usd_per_1k']:.4f} per 1,000 requests (escalations "
            f"included); the minute class {minute_ratio:.0%} (simulated)",
            f"{day_ratio:.1%}, {_met(day_ratio <= RATIO_TARGET)}",
            f"<= {RATIO_TARGET:.0%}",
        )
        through = _ratio(on.batch_usd, on.batch_realtime_usd)
        report(
            "B8",
            f"shadow p={shadow:g}: the calls answered through batches, ${on.batch_usd:.4f} "
            f"against ${on.batch_realtime_usd:.4f} for the same tokens in real time (simulated)",
            f"{through:.1%}",
            "reported",
        )
        faults = sum(c["missed"] + c["lost"] for k in (off, on) for c in k.classes.values())
        twice = off.paid_twice + on.paid_twice
        report(
            "B8",
            f"shadow p={shadow:g}: deadlines missed and requests lost (both runs)",
            f"{faults} missed or lost, {twice} paid twice, {_met(faults == 0 and twice == 0)}",
            "0, 0",
        )
    off, on = cases[(False, SHADOW)], cases[(True, SHADOW)]
    per_off = _ratio(off.shadow_usd, off.shadow_calls)
    per_on = _ratio(on.shadow_usd, on.shadow_calls)
    measured = _ratio(per_on, per_off)
    report(
        "B8",
        f"measurement (shadow p={SHADOW:g}), cost per shadow call with the lane against all "
        f"real time: ${per_on * 1000:.4f} against ${per_off * 1000:.4f} per 1,000 calls "
        f"({on.shadow_batch} of {on.shadow_calls} through batches) (simulated)",
        f"{measured:.1%}, {_met(measured <= RATIO_TARGET)}",
        f"<= {RATIO_TARGET:.0%}",
    )
    return list(cases.values())
