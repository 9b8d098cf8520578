"""One retry layer: ModelCaller retries transient errors, honours retry-after, then gives up."""

from __future__ import annotations

import time

import pytest

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
            model, breaker, RetryPolicy(attempts, 0.001, 0.01), lambda e: seen.append(e.kind)
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
