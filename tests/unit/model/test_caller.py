"""ModelCaller's retries (model/caller.py): transient errors are retried, retry-after is
honoured, then it gives up."""

from __future__ import annotations

import dataclasses
import time

import pytest

from escalator.config import load_settings
from escalator.contract.messages import Attempt
from escalator.errors import ModelRejected, ModelUnavailable
from escalator.model.breaker import CircuitBreaker
from escalator.model.caller import ModelCaller, RetryPolicy


class FakeModel:
    """A ModelClient that fails with the queued errors, then answers."""

    tier = "cheap"
    model = "fake"

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    async def classify(self, text: str) -> Attempt:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Attempt("cheap", "fake", "safe", 0.9, True)


def caller(model: FakeModel, attempts: int = 4) -> tuple[ModelCaller, list[str]]:
    seen: list[str] = []
    breaker = CircuitBreaker(window=100, failure_ratio=1.0)
    return (
        ModelCaller(
            model,
            breaker,
            RetryPolicy(
                max_attempts=attempts,
                initial_s=0.001,
                max_s=0.01,
                poison_max_attempts=12,
                invalid_answer_attempts=3,
            ),
            lambda e: seen.append(e.kind),
        ),
        seen,
    )


async def test_retries_then_succeeds_and_counts_each_retry() -> None:
    """Two transient failures, then an answer: three calls, two retries counted by kind."""
    model = FakeModel(
        [ModelUnavailable("x", kind="overloaded"), ModelUnavailable("y", kind="rate_limit")]
    )
    c, seen = caller(model)
    answer = await c.call("t")
    assert answer.label == "safe" and model.calls == 3 and seen == ["overloaded", "rate_limit"]


async def test_gives_up_after_max_attempts() -> None:
    """After max_attempts transient failures the last error is raised."""
    model = FakeModel([ModelUnavailable(str(i), kind="server_error") for i in range(10)])
    c, _ = caller(model, attempts=3)
    with pytest.raises(ModelUnavailable, match="2"):
        await c.call("t")
    assert model.calls == 3


async def test_permanent_errors_are_not_retried() -> None:
    """A ModelRejected goes straight through."""
    model = FakeModel([ModelRejected("no", reason="api_400")])
    c, seen = caller(model)
    with pytest.raises(ModelRejected):
        await c.call("t")
    assert model.calls == 1 and seen == []


async def test_retry_after_is_honoured() -> None:
    """A retry-after of 0.3 s delays the retry by at least that, above the tiny backoff."""
    model = FakeModel([ModelUnavailable("429", kind="rate_limit", retry_after_s=0.3)])
    c, _ = caller(model)
    started = time.monotonic()
    await c.call("t")
    assert time.monotonic() - started >= 0.3


def test_the_policy_is_read_from_the_settings() -> None:
    """RetryPolicy.from_settings: each variable lands in its field (none is a constant)."""
    env = {
        "ESCALATOR_MODEL_MAX_ATTEMPTS": "7",
        "ESCALATOR_BACKOFF_INITIAL_S": "0.25",
        "ESCALATOR_BACKOFF_MAX_S": "9",
        "ESCALATOR_POISON_MAX_ATTEMPTS": "21",
        "ESCALATOR_INVALID_ANSWER_ATTEMPTS": "5",
    }
    policy = RetryPolicy.from_settings(load_settings(env, require_kafka=False))
    assert policy == RetryPolicy(
        max_attempts=7, initial_s=0.25, max_s=9.0, poison_max_attempts=21, invalid_answer_attempts=5
    )


def test_the_policy_has_no_defaults_of_its_own() -> None:
    """Its defaults are the settings' (config.py), not a second copy here."""
    for f in dataclasses.fields(RetryPolicy):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name
