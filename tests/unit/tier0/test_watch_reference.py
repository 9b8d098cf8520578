"""Tier 0's live test against the final routed answer (tiers/handlers.py,
``CheapHandler._sampled``; tier0/watch.py): a sampled tier-0 answer the cheap model would
escalate is asked of the strong model too, and the unit agrees when the strong answer is tier
0's label. Where the cheap model escalates most of what tier 0 answers, an accurate tier 0 is
kept (it was withdrawn when an escalation counted as differing: BENCHMARKS.md, B9) and an
inaccurate one is still withdrawn. Calibration and the report leave the measurement out."""

from __future__ import annotations

import asyncio
import inspect
import random
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from escalator.calibration.dataset import CalibrationError, pair_decisions
from escalator.calibration.report import build_report
from escalator.config import load_settings
from escalator.contract.decisions import Decision
from escalator.contract.messages import Attempt, Request, parse_request
from escalator.errors import ModelUnavailable
from escalator.model.prices import load_prices
from escalator.observability.metrics import Metrics
from escalator.tier0.watch import watched
from escalator.tiers.handlers import CheapHandler
from escalator.tiers.routing import Thresholds
from escalator.tiers.table import HandlerParts, cheap_handler, models_of, tier_table
from tests.integration.harness import validator
from tests.unit.tier0.test_watch import Fixed
from tests.unit.tiers.test_handlers import (
    TASK,
    FakeModel,
    FakeRecord,
    FakeTier0,
    caller,
    handler,
    ok,
    on,
    refusal,
    request,
    write_artefact,
)


def strong_ok(label: str) -> Attempt:
    return replace(ok(label, 0.9, "strong"), model="fake-strong")


def _strong(answer: object) -> FakeModel:
    model = FakeModel(lambda _: answer)  # type: ignore[arg-type,return-value]
    model.tier, model.model = "strong", "fake-strong"
    return model


def _cheap(tier0: object, model: FakeModel, strong: FakeModel | None, **kw: object) -> CheapHandler:
    h: CheapHandler = handler(
        CheapHandler,
        model,
        tier0=tier0,
        strong=caller(strong) if strong is not None else None,
        rng=random.Random(1),
        metrics=Metrics(),
        **kw,
    )
    return h


def _decisions(outputs: list) -> list[Decision]:
    return [Decision.from_json(o.value) for o in on(outputs, "decisions")]


async def _sample(h: CheapHandler) -> list:
    work = h.handle(FakeRecord(request("hello"), key=b"k"))
    assert inspect.iscoroutine(work)
    return await asyncio.wait_for(work, 10)


@pytest.mark.parametrize(
    ("cheap", "strong", "loss", "strong_calls"),
    [
        (ok("safe", 0.95), strong_ok("spam"), 0.0, 0),  # accepted: final, no strong
        (ok("spam", 0.95), strong_ok("safe"), 1.0, 0),  # accepted, another label
        (ok("safe", 0.5), strong_ok("safe"), 0.0, 1),  # escalated, strong agrees
        (ok("spam", 0.5), strong_ok("spam"), 1.0, 1),  # escalated, strong differs
        (refusal(), strong_ok("safe"), 0.0, 1),  # a cheap refusal escalates too
    ],
    ids=["accepted-same", "accepted-other", "escalated-agree", "escalated-differ", "refused"],
)
async def test_a_sampled_unit_agrees_when_the_final_routed_answer_is_tier0s(
    cheap: Attempt, strong: Attempt, loss: float, strong_calls: int
) -> None:
    """The final routed answer: the cheap one when accepted, else the strong model's (asked
    only then). Tier 0's result is delivered either way."""
    model, strong_model = FakeModel(lambda _: cheap), _strong(strong)
    tier0 = FakeTier0({"hello": ("safe", 0.97)}, sample_rate=1.0)
    outputs = await _sample(_cheap(tier0, model, strong_model))
    (result,) = on(outputs, "results")
    assert orjson.loads(result.value)["tier"] == "tier0"
    assert on(outputs, "escalations") == []
    assert tier0.observed == [(loss, 1.0)]
    assert (model.calls, strong_model.calls) == (1, strong_calls)
    tiers = [(d.tier, d.outcome, d.shadow) for d in _decisions(outputs)]
    expected = [("tier0", "accepted", False), ("cheap", "shadow", True)]
    assert tiers == expected + [("strong", "shadow", True)] * strong_calls


async def test_the_strong_answer_is_a_shadow_decision_at_the_tier0_sample_rate() -> None:
    """Tier strong, outcome shadow, shadow true, sample_rate tier 0's; no cheap threshold or
    shadow rate on it (as the strong tier writes its own); valid against the schema."""
    rate = 0.25
    tier0 = FakeTier0({"hello": ("safe", 0.97)}, sample_rate=rate)
    h = _cheap(tier0, FakeModel(lambda _: ok("safe", 0.5)), _strong(strong_ok("safe")))
    while not inspect.iscoroutine(work := h.handle(FakeRecord(request("hello"), key=b"k"))):
        pass
    outputs = await asyncio.wait_for(work, 10)
    (measured,) = [o for o in on(outputs, "decisions") if b'"tier":"strong"' in o.value]
    validator("decision.v1.json").validate(orjson.loads(measured.value))
    d = Decision.from_json(measured.value)
    assert (d.outcome, d.shadow, d.sample_rate, d.attempt.model) == (
        "shadow",
        True,
        rate,
        "fake-strong",
    )
    assert d.threshold is None and d.shadow_rate is None and d.tier0_version is None
    assert measured.key == b"k"
    assert tier0.observed == [(0.0, rate)]


@pytest.mark.parametrize(("refusal_label", "loss"), [("safe", 0.0), ("unsafe", 1.0), (None, 1.0)])
async def test_a_strong_refusal_is_final_as_the_strong_tier_makes_it(
    refusal_label: str | None, loss: float
) -> None:
    """The strong tier delivers a refusal as the task's refusal_label (none: a dead letter,
    which agrees with no tier-0 answer)."""
    task = replace(TASK, refusal_label=refusal_label)
    tier0 = FakeTier0({"hello": ("safe", 0.97)}, sample_rate=1.0)
    h = _cheap(tier0, FakeModel(lambda _: ok("safe", 0.5)), _strong(refusal("strong")), task=task)
    await _sample(h)
    assert tier0.observed == [(loss, 1.0)]


async def test_a_sample_the_strong_model_cannot_answer_is_no_unit() -> None:
    """Past its retries: tier 0's answer and the cheap shadow are delivered, no unit, counted
    ``failed``."""
    strong = _strong(ModelUnavailable("529", kind="overloaded"))
    tier0 = FakeTier0({"hello": ("safe", 0.97)}, sample_rate=1.0)
    h = _cheap(tier0, FakeModel(lambda _: ok("safe", 0.5)), strong)
    outputs = await _sample(h)
    assert [(d.tier, d.outcome) for d in _decisions(outputs)] == [
        ("tier0", "accepted"),
        ("cheap", "shadow"),
    ]
    assert tier0.observed == [] and strong.calls >= 1
    assert 'escalator_tier0_samples_total{result="failed"} 1.0' in h.metrics.exposition().decode()


async def test_without_a_strong_caller_an_escalated_sample_differs() -> None:
    tier0 = FakeTier0({"hello": ("safe", 0.97)}, sample_rate=1.0)
    await _sample(_cheap(tier0, FakeModel(lambda _: ok("safe", 0.5)), None))
    assert tier0.observed == [(1.0, 1.0)]


# A world where the cheap model escalates most of tier 0's answers (B9's: about 75%). Tier 0
# answers every request and agrees with the final routed answer with probability 1 - Q; the
# target is T. Every answer is sampled (rate 1), so each request is one unit.
T, ESCALATES, N = 0.95, 0.75, 1500


async def _withdrawn(q: float, seed: int, *, strong: bool = True) -> bool:
    """Whether the live test withdraws tier 0 within N records of this world."""
    rng = random.Random(seed)
    differs: list[bool] = []

    def cheap_answer(_: int) -> Attempt:
        differs.append(rng.random() < q)
        label = "spam" if differs[-1] else "safe"
        return ok(label, 0.5 if rng.random() < ESCALATES else 0.95)

    def strong_answer(_: int) -> Attempt:  # the request's own truth, as the cheap draw made it
        return strong_ok("spam" if differs[-1] else "safe")

    tier0 = watched(Fixed(target=T), sample_rate=1.0, alpha=0.01, metrics=Metrics())
    strong_model = _strong(None)
    strong_model.answer = strong_answer  # type: ignore[assignment]
    h = _cheap(tier0, FakeModel(cheap_answer), strong_model if strong else None)
    for _ in range(N):
        if not tier0.active:
            return True
        await _sample(h)
    return not tier0.active


async def test_an_accurate_tier0_is_kept_where_the_cheap_model_escalates_most() -> None:
    """Agreement with the final answer 0.99 against a target of 0.95: over 20 seeds none is
    withdrawn (alpha 0.01); counting each escalation as differing (no strong caller), every
    seed withdraws it (the defect B9 found)."""
    kept = [not await _withdrawn(0.01, seed) for seed in range(20)]
    assert all(kept)
    assert all([await _withdrawn(0.01, seed, strong=False) for seed in range(5)])


async def test_an_inaccurate_tier0_is_withdrawn_by_the_strong_answers() -> None:
    """Agreement 0.80 against 0.95 (the strong model disagrees with tier 0 on a fifth of
    what it answers): every seed withdraws tier 0 within N records."""
    assert all([await _withdrawn(0.20, seed) for seed in range(10)])


# -- readers: calibrate leaves the measurement out; report counts it as shadow spend --------
def _record(
    tier: str, outcome: str, *, rid: str, shadow: bool = False, tokens: int = 100, **kw: object
) -> Decision:
    model = {"cheap": "claude-haiku-5-5", "strong": "claude-sonnet-5-5", "tier0": "t0-1"}[tier]
    attempt = Attempt(tier, model, "safe", 0.9, True, tokens, 5, cost_usd=0.001)
    rec = Decision.of_answer(
        _req(rid), attempt, outcome=outcome, threshold_version="v1", shadow=shadow, **kw
    )
    return replace(rec, ts_ms=1_000)


def _req(rid: str) -> Request:
    return parse_request(orjson.dumps({"id": rid, "text": "x"}), 100)


def _log(tier0_sampled: bool) -> list[Decision]:
    """Three cheap requests (one shadowed at 0.05, one not: the report prices its strong
    answer at the mean; as older logs, their decisions do not record the shadow rate, which
    calibration then takes from the shadows) and, when ``tier0_sampled``, a tier-0 answer with
    its cheap and strong measurements at the tier-0 rate 0.5 (a longer text: a dearer call)."""
    records = [
        _record("cheap", "accepted", rid="a", threshold=0.7),
        _record("strong", "shadow", rid="a", shadow=True, sample_rate=0.05),
        _record("cheap", "escalated", rid="b", threshold=0.7),
        _record("strong", "final", rid="b"),
        _record("cheap", "accepted", rid="c", threshold=0.7),
    ]
    if tier0_sampled:
        records += [
            _record("tier0", "accepted", rid="t", tier0_version="t0-1"),
            _record("cheap", "shadow", rid="t", shadow=True, sample_rate=0.5),
            _record("strong", "shadow", rid="t", shadow=True, sample_rate=0.5, tokens=5000),
        ]
    return records


def test_calibration_leaves_the_tier0_measurement_out() -> None:
    """The dataset is the same with or without it, and a log whose only strong answers
    measure tier 0 has nothing to calibrate on."""
    without, with_ = pair_decisions(_log(False)), pair_decisions(_log(True))
    assert with_.ids == without.ids == ["a", "b", "c"]
    assert with_.shadow_rate.tolist() == [0.05] * 3
    for name in ("shadow_rate", "strong_label", "answered", "certain"):
        assert getattr(with_, name).tolist() == getattr(without, name).tolist()
    only = [
        _record("cheap", "accepted", rid="a", threshold=0.7, shadow_rate=0.0),
        *_log(True)[5:],
    ]
    with pytest.raises(CalibrationError, match="no strong-tier answers"):
        pair_decisions(only)


def test_the_report_counts_the_tier0_measurement_as_shadow_spend_only() -> None:
    prices = load_prices(None)
    without, with_ = build_report(_log(False), prices), build_report(_log(True), prices)
    assert with_["requests"] == without["requests"] == 3
    assert with_["all_strong_usd"] == pytest.approx(without["all_strong_usd"])
    assert with_["actual_usd"] == pytest.approx(without["actual_usd"])
    strong_shadow = next(r for r in with_["spend"] if r["shadow"] and r["tier"] == "strong")
    assert strong_shadow["calls"] == 2  # the cheap tier's shadow and tier 0's measurement
    assert with_["shadow_usd"] > without["shadow_usd"]
    assert with_["tier0"]["answered"] == 1


# -- assembly: the strong model in the cheap tier's process, only with tier 0 on ------------
def test_the_cheap_row_calls_the_strong_model_only_with_tier0_on(tmp_path: Path) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "ESCALATOR_CHEAP_MODEL": "claude-haiku-5-5",
        "ESCALATOR_STRONG_MODEL": "claude-sonnet-5-5",
    }
    off = load_settings(env)
    on_ = load_settings({**env, "ESCALATOR_TIER0_FILE": str(write_artefact(tmp_path))})
    assert [m.model for m in models_of([tier_table(off)["cheap"]])] == ["claude-haiku-5-5"]
    both = [(m.model, m.variable) for m in models_of([tier_table(on_)["cheap"]])]
    assert both == [
        ("claude-haiku-5-5", "ESCALATOR_CHEAP_MODEL"),
        ("claude-sonnet-5-5", "ESCALATOR_STRONG_MODEL"),
    ]
    strong = caller(_strong(strong_ok("safe")))
    tier0 = FakeTier0({})
    parts = HandlerParts.of(off, task=TASK, thresholds=Thresholds(0.7), metrics=Metrics())
    with_tier0 = replace(parts, tier0=tier0, strong=strong)
    assert cheap_handler(with_tier0, caller(FakeModel(ok))).strong is strong
    assert cheap_handler(replace(parts, strong=strong), caller(FakeModel(ok))).strong is None
