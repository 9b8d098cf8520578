"""The one failure policy (ModelCaller.answer) and the breaker under it: outages and account
blocks hold the record, a request rejected alone is given up on, the cache warms first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from escalator.contract.messages import Attempt
from escalator.errors import ApiBlocked, ModelRejected, ModelUnavailable, PermanentError
from escalator.model.breaker import CircuitBreaker
from escalator.model.caller import ModelCaller, RetryPolicy


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


def test_a_success_sent_before_a_block_does_not_clear_it() -> None:
    """While blocked, only the probe's answer counts."""
    breaker = CircuitBreaker()
    breaker.block("billing", "402")
    breaker.record(True)  # a call that was already in flight
    assert breaker.blocked_reason == "billing" and breaker.state == "open"
    breaker.record(True, probe=True)
    assert breaker.blocked_reason is None and breaker.state == "closed"


def test_the_open_reason_is_the_commonest_failure_in_the_window() -> None:
    """An outage tipped over by one 400 is an outage, not a rejected account."""
    breaker = CircuitBreaker(window=10)
    for _ in range(4):
        breaker.record(False, "overloaded")
    breaker.record(False, "api_400")
    assert breaker.state == "open" and breaker.open_reason == "overloaded"
    assert breaker.hold_reason is None


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


def test_the_breaker_lets_exactly_one_probe_through_when_half_open() -> None:
    """Half-open means one call: is_open stays true for the others while the probe is out."""
    now = [0.0]
    breaker = CircuitBreaker(window=4, cooldown_s=1.0, clock=lambda: now[0])
    for _ in range(4):
        breaker.record(False, "overloaded")
    assert breaker.state == "open" and breaker.open_reason == "overloaded"
    now[0] = 1.5
    assert breaker.state == "half_open" and not breaker.is_open

    async def two() -> tuple[bool, bool]:
        first = await breaker.acquire()
        waiting = asyncio.create_task(breaker.acquire())
        await asyncio.sleep(0.1)
        assert not waiting.done() and breaker.is_open
        breaker.record(True, probe=True)
        return first, await asyncio.wait_for(waiting, 2)

    first, second = asyncio.run(two())
    assert first is True and second is False and breaker.state == "closed"


def test_hold_reason_names_blocks_and_rejections_but_not_outages() -> None:
    """Readiness and api_blocked report account trouble; an outage is not account trouble."""
    changes: list[str | None] = []
    breaker = CircuitBreaker(window=4, on_hold_change=changes.append)
    for _ in range(4):
        breaker.record(False, "overloaded")
    assert breaker.state == "open" and breaker.hold_reason is None
    breaker.block("spend_limit", "cap reached")
    assert breaker.hold_reason == "spend_limit"
    breaker.record(True, probe=True)
    assert breaker.hold_reason is None
    for _ in range(4):
        breaker.record(False, "api_400")
    assert breaker.hold_reason == "request_rejected"
    assert changes == ["spend_limit", None, "request_rejected"]


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
