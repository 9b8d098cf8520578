"""Real traffic before measurement: the strong tier sheds shadow calls at random while its
model's budget is tight and records the sample rate actually applied, so that the
calibration's inverse-probability weights stay right (a known world shows it)."""

from __future__ import annotations

import random
import statistics

import orjson

from escalator.contract.messages import Attempt, escalation_value, parse_request
from escalator.model.admission import Admission, Budget, TokenEstimate
from escalator.model.breaker import CircuitBreaker
from escalator.model.caller import ModelCaller, RetryPolicy
from escalator.observability.metrics import Metrics
from escalator.tiers.handlers import StrongHandler
from escalator.tiers.routing import Thresholds
from tests.unit.tiers.test_handlers import TASK, TOPICS, FakeRecord, handled


class KnownWorld:
    """The strong model's answer for each request is known in advance."""

    tier = "strong"
    model = "fake-strong"

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.calls = 0

    async def classify(self, text: str) -> Attempt:
        self.calls += 1
        return Attempt("strong", self.model, self.labels[text], 0.9, True, 10, 5)


def _strong(world: KnownWorld, budget: Budget, rng: random.Random) -> StrongHandler:
    gate = Admission(budget, TokenEstimate(1.0), max_tokens=128)
    caller = ModelCaller(
        world,
        CircuitBreaker(),
        RetryPolicy(
            max_attempts=1,
            initial_s=0.5,
            max_s=20.0,
            poison_max_attempts=12,
            invalid_answer_attempts=3,
        ),
        admission=gate,
    )
    return StrongHandler(
        caller=caller,
        topics=TOPICS,
        metrics=Metrics(),
        thresholds=Thresholds(0.7),
        max_text_chars=1000,
        task=TASK,
        rng=rng,
    )


def _tight(budget: Budget, pressure: float) -> None:
    """A budget with headers (so it is active; a limit far above these calls) and the given
    pressure."""
    budget.observe({"requests": (1e6, 1e6)})
    budget.pressure = pressure


def _shadow(rid: str, text: str, rate: float) -> bytes:
    request = parse_request(orjson.dumps({"id": rid, "text": text}), 1000)
    cheap = Attempt("cheap", "fake-cheap", "safe", 0.9, True, 10, 5)
    return escalation_value(request, "shadow", cheap, shadow=True, sample_rate=rate)


async def test_shadows_are_shed_when_tight_and_real_escalations_never() -> None:
    """With pressure 0.8 (keep 0.2), about a fifth of shadows are called, each decision
    records sample_rate = 0.5 x 0.2; every real escalation is answered."""
    world = KnownWorld()
    budget = Budget()
    handler = _strong(world, budget, random.Random(3))
    kept = []
    for i in range(500):
        world.labels[f"t{i}"] = "safe"
        _tight(budget, 0.8)  # each answer brings headers
        outputs = await handled(handler, FakeRecord(_shadow(f"r{i}", f"t{i}", 0.5)))
        kept += [orjson.loads(o.value) for o in outputs if o.topic == "decisions"]
    assert 70 <= len(kept) <= 130 and world.calls == len(kept)
    assert {round(d["sample_rate"], 9) for d in kept} == {0.1}
    assert "escalator_shadows_shed_total" in handler.metrics.exposition().decode()
    calls = world.calls
    for i in range(20):  # p = 1: the calibration counts these as certain, never shed
        world.labels[f"c{i}"] = "safe"
        _tight(budget, 0.8)
        await handled(handler, FakeRecord(_shadow(f"c{i}", f"c{i}", 1.0)))
    assert world.calls == calls + 20
    world.labels["real"] = "unsafe"
    request = parse_request(orjson.dumps({"id": "x", "text": "real"}), 1000)
    cheap = Attempt("cheap", "fake-cheap", "safe", 0.4, True, 10, 5)
    for _ in range(50):
        outputs = await handled(handler, FakeRecord(escalation_value(request, "low", cheap)))
        assert [o.topic for o in outputs].count("results") == 1


async def test_weighted_agreement_stays_unbiased_when_shadows_are_shed() -> None:
    """A known world: 400 accepted requests per repetition, the cheap tier samples shadows at
    rate 0.5; in the first half the budget is loose (all kept) and the cheap model agrees with
    the strong one 90% of the time, in the second it is tight (keep 0.2) and they agree 50% of
    the time: true agreement 0.70. Over 150 repetitions the inverse-probability-weighted
    estimate with the recorded sample rates is unbiased; weighting by the cheap tier's rate
    alone (ignoring the shedding) is not, and neither is the unweighted share."""
    rng = random.Random(11)
    world = KnownWorld()
    weighted, hajek, naive, unweighted = [], [], [], []
    n, rate = 400, 0.5
    for rep in range(150):
        budget = Budget()
        handler = _strong(world, budget, rng)
        agree_of: dict[str, bool] = {}
        decisions = []
        for i in range(n):
            tight = i >= n // 2
            agrees = rng.random() < (0.5 if tight else 0.9)
            rid, text = f"{rep}-{i}", f"text {rep} {i}"
            world.labels[text] = "safe" if agrees else "unsafe"  # the cheap label is "safe"
            agree_of[rid] = agrees
            if rng.random() >= rate:
                continue  # the cheap tier did not shadow it
            _tight(budget, 0.8 if tight else 0.0)
            for out in await handled(handler, FakeRecord(_shadow(rid, text, rate))):
                decisions.append(orjson.loads(out.value))
        w = [1 / d["sample_rate"] for d in decisions]
        a = [1.0 if d["attempt"]["label"] == "safe" else 0.0 for d in decisions]
        assert all(agree_of[d["id"]] == bool(x) for d, x in zip(decisions, a, strict=True))
        weighted.append(sum(wi * ai for wi, ai in zip(w, a, strict=True)) / n)
        hajek.append(sum(wi * ai for wi, ai in zip(w, a, strict=True)) / sum(w))
        naive.append(sum(a) / rate / n)
        unweighted.append(sum(a) / len(a))
    truth = 0.70
    assert abs(statistics.fmean(weighted) - truth) < 0.02
    assert abs(statistics.fmean(hajek) - truth) < 0.02
    assert abs(statistics.fmean(naive) - truth) > 0.1
    assert abs(statistics.fmean(unweighted) - truth) > 0.05
