"""The model stacks (model/stack.py): what the settings assemble inside model/, how the
rate-limit headers of a response reach the metrics and the admission gate, and where the
gate's share of the limit comes from."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx2 as httpx

from escalator.config import Settings, load_settings
from escalator.contract.messages import Attempt
from escalator.model.caller import ModelClient
from escalator.model.prices import PriceTable, load_prices
from escalator.model.stack import ModelChoice, ModelStacks, build_model_stacks, model_profiles
from escalator.model.task import Task, load_task
from escalator.observability.metrics import Metrics
from escalator.tiers.table import tier_table

TASK = load_task(None)
PRICES = load_prices(None)
HEADERS = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-input-tokens-limit": "40000",
    "anthropic-ratelimit-input-tokens-remaining": "39000",
}


def settings(**env: str) -> Settings:
    return load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", **env})


def choices(s: Settings, tiers: list[str]) -> list[ModelChoice]:
    table = tier_table(s)
    return [table[t].model for t in tiers]


def answering(handler: Callable[[httpx.Request], httpx.Response]) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key="sk-unit-test",
        base_url="http://fake",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )


def ok(request: httpx.Request) -> httpx.Response:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-5-5",
        "content": [{"type": "text", "text": '{"label": "safe", "confidence": 0.9}'}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "stop_details": None,
        "usage": {"input_tokens": 100, "output_tokens": 10},
    }
    return httpx.Response(200, json=body, headers=HEADERS)


def stacks(s: Settings, tiers: list[str], metrics: Metrics, **kw: object) -> ModelStacks:
    c = choices(s, tiers)
    return build_model_stacks(
        s,
        c,
        task=TASK,
        prices=PRICES,
        profiles=model_profiles(s, c),
        metrics=metrics,
        **kw,  # type: ignore[arg-type]
    )


async def test_rate_limit_headers_reach_the_metrics_and_the_gate_of_the_caller() -> None:
    """A response's headers go adapter -> caller -> gate: the gate counts an observation and
    the rate-limit gauges show the values, with no callback outside model/."""
    metrics = Metrics()
    built = stacks(settings(), ["cheap"], metrics, client=answering(ok))
    stack = built["cheap"]
    assert stack.admission.observations == 0
    attempt = await stack.caller.call("hello")
    assert attempt.valid and attempt.label == "safe"
    assert stack.admission.observations == 1
    model = stack.choice.model
    remaining = metrics.registry.get_sample_value(
        "escalator_ratelimit_remaining", {"model": model, "kind": "input_tokens"}
    )
    assert remaining == 39000
    await built.aclose()


async def test_tiers_whose_models_share_a_rate_limit_group_share_one_gate() -> None:
    """Two tiers on models of one family and major version draw from one gate; on models of
    different families each has its own."""
    same = settings(
        ESCALATOR_CHEAP_MODEL="claude-haiku-5-5", ESCALATOR_STRONG_MODEL="claude-haiku-5-5"
    )
    shared = stacks(same, ["cheap", "strong"], Metrics(), client=answering(ok))
    assert shared["cheap"].admission is shared["strong"].admission
    assert shared["cheap"].share is shared["strong"].share
    apart = stacks(settings(), ["cheap", "strong"], Metrics(), client=answering(ok))
    assert apart["cheap"].admission is not apart["strong"].admission
    await shared.aclose()
    await apart.aclose()


class Member:
    def __init__(self, share: float) -> None:
        self.partition_share = share


async def test_the_gate_takes_its_share_from_the_first_consumer_it_follows() -> None:
    """1.0 until a consumer is followed; then that consumer's partition share, read live;
    a second consumer of the same gate does not replace the first."""
    built = stacks(settings(), ["cheap"], Metrics(), client=answering(ok))
    stack = built["cheap"]
    budget = stack.admission.budget
    assert budget.share() == 1.0
    first = Member(0.25)
    stack.follow(first)
    assert budget.share() == 0.25
    first.partition_share = 0.5
    assert budget.share() == 0.5
    stack.follow(Member(0.1))
    assert budget.share() == 0.5
    await built.aclose()


class Fake:
    def __init__(self, tier: str, model: str) -> None:
        self.tier, self.model = tier, model

    async def classify(self, text: str, *, credit_token: str | None = None) -> Attempt:
        return Attempt(self.tier, self.model, "safe", 0.9, True, 1, 1, 0, 0, 0.0, 1.0)


def fakes(tier: str, model: str, task: Task, prices: PriceTable) -> ModelClient:
    return Fake(tier, model)


async def test_a_model_factory_replaces_the_api_client_and_its_checks() -> None:
    """With fakes there is no API client to close and no model to check; with the API each
    configured model is checked once at start."""
    faked = stacks(settings(), ["cheap", "strong"], Metrics(), model_factory=fakes)
    assert faked.client is None and faked.checks == []
    assert (await faked["strong"].caller.call("x")).label == "safe"
    real = stacks(settings(), ["cheap", "strong"], Metrics(), client=answering(ok))
    assert len(real.checks) == 2
    unchecked = stacks(
        settings(ESCALATOR_MODEL_CHECK="false"), ["cheap"], Metrics(), client=answering(ok)
    )
    assert unchecked.checks == []
    await real.aclose()
    await unchecked.aclose()


async def test_each_stack_holds_its_tier_limit_breaker_and_hold() -> None:
    """The in-flight limit the worker reads is the caller's; the tier's hold is None while
    calls flow and names the account's reason once the breaker is blocked."""
    built = stacks(settings(), ["cheap"], Metrics(), model_factory=fakes)
    stack = built["cheap"]
    assert stack.caller.limit is stack.limit and stack.caller.breaker is stack.breaker
    assert stack.hold() is None
    stack.breaker.block("spend_limit", "spend cap reached", probe=False)
    hold = stack.hold()
    assert hold is not None and hold.reason == "spend_limit"
