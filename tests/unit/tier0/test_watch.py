"""Tier 0 under watch (tier0/watch.py; tiers/handlers.py, ``CheapHandler._watched``): a sample
of its answers asked of the cheap model too, the sequential test of its certified target on
those units, and its withdrawal when the test rejects."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import pytest

from escalator.contract.decisions import Decision
from escalator.observability.metrics import Metrics
from escalator.tier0.state import Withdrawal
from escalator.tier0.watch import Watched, watched
from escalator.tiers.handlers import CheapHandler
from tests.integration.harness import validator
from tests.unit.tier0.test_statistics import FULL
from tests.unit.tiers.test_handlers import (
    FakeModel,
    FakeRecord,
    FakeTier0,
    handler,
    ok,
    on,
    request,
)


@dataclass(frozen=True)
class Fixed:
    """An artefact answering every text with one (label, confidence)."""

    answer: tuple[str, float] = ("safe", 0.97)
    version: str = "t0-abcdef0123"
    threshold: float = 0.9
    target: float = 0.95

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        return [self.answer for _ in texts]


def _cheap(tier0: object, model: FakeModel, seed: int = 1, **kw: object) -> CheapHandler:
    h: CheapHandler = handler(
        CheapHandler, model, tier0=tier0, rng=random.Random(seed), metrics=Metrics(), **kw
    )
    return h


def _tier0_outputs(outputs: list) -> tuple[dict, Decision]:
    (result,) = on(outputs, "results")
    decided = [Decision.from_json(o.value) for o in on(outputs, "decisions")]
    (local,) = [d for d in decided if d.tier == "tier0"]
    return orjson.loads(result.value), local


async def test_the_sample_rate_is_honoured_and_sampled_answers_are_still_tier0s() -> None:
    """Over 4,000 confident records at rate 0.1: the sampled share within 4 standard errors;
    every record's result is tier 0's; a sampled one (a coroutine) also carries the cheap
    model's answer as a shadow cheap decision with the rate, valid against the schema, and is
    a unit at probability 0.1; an unsampled one is a list and calls no model."""
    n, rate = 4000, 0.1
    model = FakeModel(lambda _: ok("safe", 0.95))
    tier0 = FakeTier0({"hello": ("safe", 0.97)}, sample_rate=rate)
    h = _cheap(tier0, model)
    sampled = 0
    for _ in range(n):
        out = h.handle(FakeRecord(request("hello"), key=b"k"))
        if inspect.iscoroutine(out):
            sampled += 1
            outputs = await asyncio.wait_for(out, 10)
            result, _ = _tier0_outputs(outputs)
            (shadow,) = [o for o in on(outputs, "decisions") if b'"tier":"cheap"' in o.value]
            validator("decision.v1.json").validate(orjson.loads(shadow.value))
            d = Decision.from_json(shadow.value)
            assert (d.outcome, d.shadow, d.sample_rate) == ("shadow", True, rate)
        else:
            assert isinstance(out, list)
            result, _ = _tier0_outputs(out)
            assert len(on(out, "decisions")) == 1
        assert result["tier"] == "tier0" and result["label"] == "safe"
        assert on(out if isinstance(out, list) else outputs, "escalations") == []
    se = (rate * (1 - rate) / n) ** 0.5
    assert abs(sampled / n - rate) < 4 * se
    assert model.calls == sampled
    assert tier0.observed == [(0.0, rate)] * sampled


@pytest.mark.parametrize(
    ("cheap", "loss"),
    [
        (ok("safe", 0.95), 0.0),  # accepted, same label: agrees
        (ok("spam", 0.95), 1.0),  # accepted, another label
        (ok("safe", 0.5), 1.0),  # would escalate, no strong caller here: counts as differing
    ],
)
async def test_a_sampled_unit_agrees_only_when_the_routed_cheap_answer_is_tier0s(
    cheap: object, loss: float
) -> None:
    model = FakeModel(lambda _: cheap)
    tier0 = FakeTier0({"hello": ("safe", 0.97)}, sample_rate=1.0)
    out = _cheap(tier0, model).handle(FakeRecord(request("hello")))
    assert inspect.iscoroutine(out)
    outputs = await asyncio.wait_for(out, 10)
    result, _ = _tier0_outputs(outputs)
    assert result["tier"] == "tier0"
    assert tier0.observed == [(loss, 1.0)]


async def test_a_sample_the_model_cannot_answer_still_delivers_tier0s_answer_and_is_no_unit() -> (
    None
):
    from escalator.errors import ModelUnavailable

    model = FakeModel(lambda _: ModelUnavailable("529", kind="overloaded"))
    tier0 = FakeTier0({"hello": ("safe", 0.97)}, sample_rate=1.0)
    h = _cheap(tier0, model)
    outputs = await asyncio.wait_for(h.handle(FakeRecord(request("hello"))), 10)
    result, _ = _tier0_outputs(outputs)
    assert result["tier"] == "tier0" and len(on(outputs, "decisions")) == 1
    assert tier0.observed == []
    text = h.metrics.exposition().decode()
    assert 'escalator_tier0_samples_total{result="failed"} 1.0' in text


def test_a_declined_request_is_a_unit_that_agrees_and_goes_to_the_model() -> None:
    model = FakeModel(lambda _: ok())
    tier0 = FakeTier0({"hello": ("safe", 0.5)}, sample_rate=1.0)
    out = _cheap(tier0, model).handle(FakeRecord(request("hello")))
    assert inspect.iscoroutine(out)
    out.close()
    assert tier0.observed == [(0.0, 1.0)]


def _watch(rate: float, alpha: float, metrics: Metrics, target: float = 0.95) -> Watched:
    return watched(Fixed(target=target), sample_rate=rate, alpha=alpha, metrics=metrics)


async def test_a_withdrawal_sends_every_later_record_to_the_model() -> None:
    """Every sample differs: the test rejects, tier 0 withdraws itself (metrics say so), and
    from then on every record is the model's (a coroutine, a cheap result), tier 0 not asked."""
    metrics = Metrics()
    tier0 = _watch(1.0, 0.01, metrics)
    model = FakeModel(lambda _: ok("spam", 0.95))
    h = _cheap(tier0, model)
    handled = 0
    while tier0.active and handled < 200:
        out = h.handle(FakeRecord(request("hello")))
        assert inspect.iscoroutine(out)  # the rate is 1: every answer is sampled
        result, _ = _tier0_outputs(await asyncio.wait_for(out, 10))
        assert result["tier"] == "tier0"
        handled += 1
    assert not tier0.active and handled < 200
    text = metrics.exposition().decode()
    assert 'escalator_tier0_active{version="t0-abcdef0123"} 0.0' in text
    assert 'escalator_tier0_withdrawals_total{version="t0-abcdef0123"} 1.0' in text
    assert 'escalator_monitor_rejected{monitor="tier0",version="t0-abcdef0123"} 1.0' in text
    calls = model.calls
    for _ in range(20):
        out = h.handle(FakeRecord(request("hello")))
        assert inspect.iscoroutine(out)
        (result,) = on(await asyncio.wait_for(out, 10), "results")
        assert orjson.loads(result.value)["tier"] == "cheap"
    assert model.calls == calls + 20


def test_a_withdrawal_and_a_remembered_one_each_say_so_in_an_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A withdrawal by the live test logs ``tier0_withdrawn`` with what was recorded; one
    remembered at start-up logs ``tier0_still_withdrawn`` with the recorded figures and when."""
    tier0 = _watch(1.0, 0.01, Metrics())
    while tier0.active:
        tier0.observe(1.0, 1.0)
    monitor = tier0.live.monitor if tier0.live is not None else None
    assert monitor is not None
    restarted = _watch(1.0, 0.01, Metrics())
    restarted.withdraw(remembered=Withdrawal(restarted.version, 1234, 0.9, 250.0, 7))
    lines = [
        (r.levelname, r.getMessage(), r.fields)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("tier0_")
    ]
    version = tier0.version
    assert lines == [
        (
            "ERROR",
            "tier0_withdrawn",
            {
                "version": version,
                "target": 0.95,
                "evalue": round(monitor.evalue, 3),
                "observations": monitor.observations,
            },
        ),
        (
            "ERROR",
            "tier0_still_withdrawn",
            {
                "version": version,
                "withdrawn_at_ms": 1234,
                "target": 0.9,
                "evalue": 250.0,
                "observations": 7,
            },
        ),
    ]


def test_no_sampling_or_no_room_under_the_target_means_no_test() -> None:
    metrics = Metrics()
    assert _watch(0.0, 0.01, metrics).live is None
    assert _watch(0.05, 0.01, metrics, target=1.0).live is None
    w = _watch(0.0, 0.01, metrics)
    for _ in range(1000):
        w.observe(1.0, 1.0)
    assert w.active


# Known truth: the stream the cheap tier feeds the watch. Tier 0 answers a share ANSWERED of
# requests, differing from the routed answer with probability q among them; a share RATE of its
# answers is sampled. The promise: ANSWERED * q <= 1 - T.
T, ALPHA, RATE, ANSWERED = 0.95, 0.01, 0.05, 0.6
REPS = 1000 if FULL else 200
N_NULL = 100_000  # requests per repetition without a drift
DRIFT_AT, N_DRIFT = 5_000, 45_000


def _stream(seed: int, n: int, q_before: float, q_after: float | None) -> int | None:
    """The request at which tier 0 withdrew (None: never), the drift at DRIFT_AT."""
    w = _watch(RATE, ALPHA, Metrics())
    rng = random.Random(seed)
    for i in range(n):
        q = q_before if q_after is None or i < DRIFT_AT else q_after
        if rng.random() < ANSWERED:
            if rng.random() < RATE:
                w.observe(1.0 if rng.random() < q else 0.0, RATE)
        else:
            w.observe(0.0, 1.0)
        if not w.active:
            return i
    return None


@pytest.mark.timeout(1800 if FULL else 240)
def test_the_watch_rarely_withdraws_a_tier0_that_keeps_its_promise() -> None:
    """At the boundary (ANSWERED * q = 1 - T exactly, the hardest case the promise allows),
    over 100,000 requests each: false withdrawals at most alpha, up to sampling error."""
    q = (1 - T) / ANSWERED
    false = sum(_stream(seed, N_NULL, q, None) is not None for seed in range(REPS))
    print(f"\nno drift, at the boundary: withdrawn {false}/{REPS} over {N_NULL:,} requests")
    assert false / REPS <= ALPHA + 3 * (ALPHA * (1 - ALPHA) / REPS) ** 0.5


@pytest.mark.timeout(1800 if FULL else 240)
@pytest.mark.parametrize("q_after", [0.25, 0.15])
def test_the_watch_withdraws_tier0_soon_after_a_drift(q_after: float) -> None:
    """Before the drift a little inside the promise (ANSWERED * q = 0.8 (1 - T)); after it,
    disagreement among tier 0's answers rises to q_after (ANSWERED * q_after = 3 or 1.8 times
    1 - T): nearly always withdrawn within 40,000 requests, never before the drift more often
    than alpha allows."""
    q = 0.8 * (1 - T) / ANSWERED
    at = [_stream(REPS + seed, N_DRIFT, q, q_after) for seed in range(REPS)]
    early = sum(a is not None and a < DRIFT_AT for a in at)
    delays = sorted(a - DRIFT_AT for a in at if a is not None and a >= DRIFT_AT)
    withdrawn = len(delays)
    median = delays[len(delays) // 2] if delays else None
    p90 = delays[int(0.9 * len(delays))] if delays else None
    print(
        f"\ndrift to q={q_after}: withdrawn after it {withdrawn}/{REPS}, before it {early}; "
        f"delay in requests median {median}, 90th percentile {p90}, max {max(delays or [0])}"
    )
    assert withdrawn >= 0.95 * REPS
    assert early / REPS <= ALPHA + 3 * (ALPHA * (1 - ALPHA) / REPS) ** 0.5
