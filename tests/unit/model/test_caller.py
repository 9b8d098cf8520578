"""ModelCaller (model/caller.py): its retries (transient errors are retried, retry-after is
honoured, then it gives up), and the one failure policy (``ModelCaller.answer``) over the
breaker: outages and account blocks hold the record, a request rejected alone is given up on,
the cache warms first, invalid answers are asked again up to the policy's limit."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import pytest

from escalator.config import load_settings
from escalator.contract.messages import Attempt
from escalator.errors import ApiBlocked, ModelRejected, ModelUnavailable, PermanentError
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


# -- the failure policy (answer) and the breaker under it -------------------------------------
class ScriptedModel:
    """A ModelClient whose answer for a text is decided by ``behaviour(text, call_number)``."""

    tier = "cheap"
    model = "fake"

    def __init__(self, behaviour: Callable[[str, int], Exception | None]) -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def classify(self, text: str) -> Attempt:
        self.calls.append(text)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.002)
            error = self.behaviour(text, len(self.calls))
        finally:
            self.in_flight -= 1
        if error is not None:
            raise error
        return Attempt("cheap", "fake", "safe", 0.9, True)


def make_caller(
    model: ScriptedModel,
    *,
    warm: bool = False,
    poison: int = 12,
    invalid: int = 3,
    blocked_probe_s: float = 0.05,
) -> ModelCaller:
    breaker = CircuitBreaker(
        window=10,
        failure_ratio=0.5,
        cooldown_s=0.05,
        cooldown_max_s=0.1,
        blocked_cooldown_s=blocked_probe_s,
    )
    return ModelCaller(
        model,
        breaker,
        RetryPolicy(
            max_attempts=2,
            initial_s=0.001,
            max_s=0.01,
            poison_max_attempts=poison,
            invalid_answer_attempts=invalid,
        ),
        warm_ttl_s=60.0 if warm else None,
    )


async def test_a_request_rejected_while_others_succeed_is_given_up_after_two_calls() -> None:
    """A 400 for one text, while the others are answered, ends as ModelRejected: the record is
    bad, not the account (two calls: 400s are not billed, and one success in between)."""

    def behaviour(text: str, n: int) -> Exception | None:
        return ModelRejected("bad", reason="api_400") if text == "bad" else None

    model = ScriptedModel(behaviour)
    caller = make_caller(model)

    async def others() -> None:
        for _ in range(30):
            await caller.answer("good")

    other = asyncio.create_task(others())
    with pytest.raises(ModelRejected):
        await asyncio.wait_for(caller.answer("bad"), 5)
    await other
    assert model.calls.count("bad") == 2


async def test_when_every_call_is_rejected_the_traffic_is_held_not_given_up() -> None:
    """A 400 for everything (a schema the API refuses, a spend limit with unknown wording) opens
    the breaker with reason request_rejected; records wait, and finish once it clears."""
    broken = True

    def behaviour(text: str, n: int) -> Exception | None:
        return ModelRejected("schema", reason="api_400") if broken else None

    model = ScriptedModel(behaviour)
    caller = make_caller(model)
    tasks = [asyncio.create_task(caller.answer(f"t{i}")) for i in range(12)]
    for _ in range(200):
        if caller.breaker.hold_reason == "request_rejected":
            break
        await asyncio.sleep(0.01)
    assert caller.breaker.hold_reason == "request_rejected"
    assert not any(t.done() for t in tasks), "a record was given up on during the hold"
    broken = False
    done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert all(a.valid for a in done)
    assert caller.breaker.hold_reason is None


@pytest.mark.parametrize("reason", ["spend_limit", "billing", "credentials", "model_not_found"])
async def test_an_account_block_holds_every_record_and_probes_one_call_at_a_time(
    reason: str,
) -> None:
    """ApiBlocked opens the breaker at once with the reason; while blocked only the probe
    calls; when the probe succeeds every held record is answered; nothing is raised."""
    blocked = True

    def behaviour(text: str, n: int) -> Exception | None:
        return ApiBlocked("account", kind=reason) if blocked else None

    model = ScriptedModel(behaviour)
    caller = make_caller(model)
    tasks = [asyncio.create_task(caller.answer(f"t{i}")) for i in range(20)]
    await asyncio.sleep(0.3)
    assert caller.breaker.blocked_reason == reason and caller.paused
    calls_while_blocked = len(model.calls)
    await asyncio.sleep(0.3)
    # About one probe per 0.05 s, never the whole backlog at once.
    assert len(model.calls) - calls_while_blocked < 20
    assert not any(t.done() for t in tasks)
    blocked = False
    done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert len(done) == 20 and caller.breaker.blocked_reason is None


async def test_a_record_failing_alone_is_given_up_as_poison() -> None:
    """500s for one text while the others are answered end as PermanentError
    model_unavailable after poison_max_attempts calls."""

    def behaviour(text: str, n: int) -> Exception | None:
        return ModelUnavailable("500", kind="server_error") if text == "poison" else None

    model = ScriptedModel(behaviour)
    caller = make_caller(model, poison=6)

    async def others() -> None:
        for _ in range(60):
            await caller.answer("good")

    other = asyncio.create_task(others())
    with pytest.raises(PermanentError) as info:
        await asyncio.wait_for(caller.answer("poison"), 10)
    await other
    assert info.value.reason == "model_unavailable"
    assert model.calls.count("poison") == 6


@pytest.mark.parametrize("kind", ["rate_limit", "overloaded", "connection"])
async def test_rate_limits_and_overload_never_make_a_record_poison(kind: str) -> None:
    """A 429, 529 or connection failure is about the account or the API, not the record:
    however long it lasts for one text, that record is held, never given up on."""
    state = {"failing": True}

    def behaviour(text: str, n: int) -> Exception | None:
        if text == "unlucky" and state["failing"]:
            return ModelUnavailable("x", kind=kind)
        return None

    model = ScriptedModel(behaviour)
    caller = make_caller(model, poison=4)
    record = asyncio.create_task(caller.answer("unlucky"))
    for _ in range(60):
        await caller.answer("good")
    assert not record.done() and model.calls.count("unlucky") > 4
    state["failing"] = False
    assert (await asyncio.wait_for(record, 5)).valid


async def test_an_outage_the_breaker_has_not_seen_holds_the_record() -> None:
    """With one record in flight and every call failing (too few calls to open a large
    breaker window), nobody else is answered: an outage, not poison; the record waits."""
    state = {"down": True}
    model = ScriptedModel(
        lambda t, n: ModelUnavailable("500", kind="server_error") if state["down"] else None
    )
    breaker = CircuitBreaker(window=200, failure_ratio=0.5)
    caller = ModelCaller(
        model,
        breaker,
        RetryPolicy(
            max_attempts=2,
            initial_s=0.001,
            max_s=0.005,
            poison_max_attempts=4,
            invalid_answer_attempts=3,
        ),
    )
    record = asyncio.create_task(caller.answer("only"))
    await asyncio.sleep(0.3)
    assert not record.done() and len(model.calls) > 4
    state["down"] = False
    assert (await asyncio.wait_for(record, 5)).valid


async def test_a_warm_up_that_hits_a_block_sends_no_other_call() -> None:
    """The first call after start-up warms the cache and gets a spend-limit block: the records
    that waited for it go back to the breaker; only the probe calls while it lasts."""
    state = {"blocked": True}
    model = ScriptedModel(
        lambda t, n: ApiBlocked("cap", kind="spend_limit") if state["blocked"] else None
    )
    caller = make_caller(model, warm=True, blocked_probe_s=1.0)
    tasks = [asyncio.create_task(caller.answer(f"t{i}")) for i in range(20)]
    await asyncio.sleep(0.5)
    assert len(model.calls) == 1, model.calls
    state["blocked"] = False
    done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert len(done) == 20


async def test_give_up_when_unavailable_raises_the_transient_error_but_holds_a_block() -> None:
    """The cheap tier's escalate option: an outage raises (to escalate); a block never does."""
    model = ScriptedModel(lambda t, n: ModelUnavailable("down", kind="overloaded"))
    caller = make_caller(model)
    with pytest.raises(ModelUnavailable):
        await caller.answer("x", give_up_when_unavailable=True)
    state = {"blocked": True}
    blocked = ScriptedModel(
        lambda t, n: ApiBlocked("cap", kind="spend_limit") if state["blocked"] else None
    )
    caller = make_caller(blocked)
    task = asyncio.create_task(caller.answer("x", give_up_when_unavailable=True))
    await asyncio.sleep(0.2)
    assert not task.done()
    state["blocked"] = False
    assert (await asyncio.wait_for(task, 5)).valid


async def test_the_first_call_warms_the_cache_alone() -> None:
    """After start-up one call goes first; the others wait for its answer (each would pay a
    cache write otherwise); then they fan out."""
    spans: list[tuple[str, float, float]] = []

    class Timed(ScriptedModel):
        async def classify(self, text: str) -> Attempt:
            start = time.monotonic()
            answer = await super().classify(text)
            spans.append((text, start, time.monotonic()))
            return answer

    model = Timed(lambda t, n: None)
    caller = make_caller(model, warm=True)
    await asyncio.gather(*(caller.answer(f"t{i}") for i in range(16)))
    (first,) = [s for s in spans if s[0] == model.calls[0]]
    others = [s for s in spans if s is not first]
    assert len(others) == 15 and all(start >= first[2] for _, start, _ in others)
    assert model.max_in_flight > 1, "never fanned out after the warm-up"


class InvalidAnswers(ScriptedModel):
    """Answers ``garbled`` with an answer that fails validation, ``refused`` with a refusal."""

    async def classify(self, text: str) -> Attempt:
        answer = await super().classify(text)
        if text == "garbled":
            return Attempt("cheap", "fake", None, 0.0, False, error="answer_not_json")
        if text == "refused":
            return Attempt(
                "cheap", "fake", None, 0.0, False, error="refused", stop_reason="refusal"
            )
        return answer


@pytest.mark.parametrize("limit", [1, 3, 6])
async def test_invalid_answers_are_asked_again_up_to_the_policys_limit(limit: int) -> None:
    """With on_invalid, an answer that fails validation is handed over and asked again; after
    invalid_answer_attempts of them, PermanentError model_output_invalid."""
    model = InvalidAnswers(lambda t, n: None)
    caller = make_caller(model, invalid=limit)
    seen: list[Attempt] = []
    with pytest.raises(PermanentError) as info:
        await caller.answer("garbled", on_invalid=seen.append)
    assert info.value.reason == "model_output_invalid"
    assert model.calls.count("garbled") == limit and len(seen) == limit
    assert "answer_not_json" in str(info.value)


async def test_without_on_invalid_an_invalid_answer_is_returned_and_a_refusal_never_retried() -> (
    None
):
    """The cheap tier's way: the invalid answer comes back after one call. A refusal is an
    answer: returned at once even with on_invalid (each refusal is billed)."""
    model = InvalidAnswers(lambda t, n: None)
    caller = make_caller(model, invalid=5)
    answer = await caller.answer("garbled")
    assert not answer.valid and model.calls == ["garbled"]
    seen: list[Attempt] = []
    refused = await caller.answer("refused", on_invalid=seen.append)
    assert refused.refused and model.calls.count("refused") == 1 and seen == []
