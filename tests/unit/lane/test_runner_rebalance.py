"""Two lane workers across a rebalance (lane/runner.py), sharing one fake state topic and one
fake Batches API: the old owner's intent write or create call is still under way when its
partition moves, and no member is created in two batches (counted per custom id at the API).
Also: an intent whose create never happened is still closed and resubmitted, once it is older
than the grace that covers a create in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import anthropic

from escalator.errors import ModelUnavailable
from escalator.lane.batches import AnthropicBatches, ItemResult
from escalator.lane.deadlines import CompletionTimes
from escalator.lane.limits import PacedBatches
from escalator.lane.runner import BatchRunner
from escalator.lane.state import BatchState, open_batches
from tests.unit.lane.fakes import FakeBatches, FakeState
from tests.unit.lane.test_runner import PARAMS, Clock, runner, settle, succeeded


class SlowState(FakeState):
    """The state topic, whose next intent write (or, with ``ids``, the next write of a batch
    id) waits for ``gate`` once ``slow`` is set (the broker has not acknowledged it yet: a
    reader does not see it)."""

    def __init__(self, *, ids: bool = False) -> None:
        super().__init__()
        self.ids = ids
        self.slow = False
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def write(self, state: BatchState) -> None:
        if self.slow and (state.batch_id is not None) == self.ids:
            self.slow = False
            self.entered.set()
            await self.gate.wait()
        await super().write(state)


async def held_in_write(r: BatchRunner, state: SlowState) -> asyncio.Task[None]:
    """A round of ``r`` under way, held in the state write ``state`` gates."""
    state.slow = True
    round_ = asyncio.create_task(r.tick())
    await asyncio.wait_for(state.entered.wait(), 1)
    return round_


class SlowBatches(FakeBatches):
    """The Batches API, whose next create waits for ``gate`` once ``slow`` is set (the batch
    exists only once it is let through)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(succeeded, clock)
        self.slow = False
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def create(self, requests: list[dict[str, Any]]) -> str:
        if self.slow:
            self.slow = False
            self.entered.set()
            await self.gate.wait()
        return await super().create(requests)


def creates_per_member(api: FakeBatches) -> Counter[str]:
    return Counter(q["custom_id"] for batch in api.created for q in batch)


def joins(r: BatchRunner, offsets: tuple[int, ...]) -> list[asyncio.Task[ItemResult | None]]:
    return [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in offsets]


async def answered(waits: list[asyncio.Task[ItemResult | None]]) -> list[Any]:
    results = await asyncio.wait_for(asyncio.gather(*waits), 1)
    return [r.message if r is not None else None for r in results]


async def closed_then_resubmitted(
    r: BatchRunner,
    api: FakeBatches,
    state: FakeState,
    key: bytes,
    waits: list[asyncio.Task[ItemResult | None]],
) -> None:
    """The next round closes the intent ``key`` (p0o1, p0o2) and creates them in one batch,
    whose answers the waiting records get."""
    await r.tick()
    assert (key, None) in state.records
    assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
    api.finish("b1")
    await r.tick()
    assert await answered(waits) == ["answer-p0o1", "answer-p0o2"]


async def test_an_intent_still_being_written_at_revocation_is_not_created_twice() -> None:
    """Race A: the old owner's intent write is not acknowledged when its partition is revoked,
    so the new owner's state read does not see it and batches the same records. The old owner
    creates nothing for members revoked before its create call (its intent is closed): every
    member is created in exactly one batch, the new owner's, and answered from it."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), SlowState()
    async with runner(api, state, clock, max_requests=2) as old:
        lost = joins(old, (1, 2))
        await settle()
        sending = await held_in_write(old, state)
        old.give_up({0})  # the rebalance: the intent write is still under way
        async with runner(api, state, clock, max_requests=2) as new:
            new.refresh()  # the engine's assignment
            moved = joins(new, (1, 2))
            await settle()
            await new.tick()
            state.gate.set()  # the old owner's intent lands after the new owner's read
            await sending
            await settle()
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
            await new.tick()
            await old.tick()
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
            api.finish("b1")
            await new.tick()
            assert await answered(moved) == ["answer-p0o1", "answer-p0o2"]
    assert all(t.cancelled() for t in lost)


async def test_an_intent_landing_before_the_new_owners_intent_is_waited_for() -> None:
    """Race A, later: the old owner's intent lands after the new owner's state read (on its
    assignment) but before the new owner writes an intent of its own: the new owner reads the
    state topic again first, finds the members in that intent and leaves them out of its own
    batch. Only one batch ever holds them."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), SlowState()
    async with runner(api, state, clock, max_requests=2) as old:
        lost = joins(old, (1, 2))
        await settle()
        sending = await held_in_write(old, state)
        async with runner(api, state, clock, max_requests=2) as new:
            new.refresh()
            moved = joins(new, (1, 2))
            await settle()
            state.gate.set()  # lands before the new owner's intent; the old owner still owns p0
            await sending
            await new.tick()
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
            assert len(api.created) == 1
            old.give_up({0})
            api.finish("b1")
            await new.tick()  # b1 listed, ended, its results name the intent's members
            await new.tick()
            assert await answered(moved) == ["answer-p0o1", "answer-p0o2"]
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
    assert all(t.cancelled() for t in lost)


async def test_an_intent_whose_create_is_in_flight_is_not_closed_by_the_new_owner() -> None:
    """Race B: the new owner holds the old owner's intent while the old owner's create is
    still under way: the API lists no batch and none is running, yet the intent is younger
    than the grace, so it is not closed and its members not resubmitted. The create lands, the
    new owner adopts that batch once it has ended: one create per member."""
    clock = Clock()
    api, state = SlowBatches(clock), FakeState()
    async with runner(api, state, clock, max_requests=2) as old:
        lost = joins(old, (1, 2))
        await settle()
        api.slow = True
        sending = asyncio.create_task(old.tick())
        await asyncio.wait_for(api.entered.wait(), 1)
        old.give_up({0})  # the rebalance: the create is still under way
        async with runner(api, state, clock, max_requests=2) as new:
            new.refresh()
            moved = joins(new, (1, 2))
            await settle()
            clock.now += 5
            await new.tick()
            await new.tick()
            assert api.created == []
            api.gate.set()
            await sending
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
            clock.now += 3600
            await new.tick()  # b1 is running: waited for
            api.finish("b1")
            await new.tick()  # adopted
            await new.tick()  # collected
            assert await answered(moved) == ["answer-p0o1", "answer-p0o2"]
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
    assert all(t.cancelled() for t in lost)


async def test_a_crashed_intent_is_closed_and_resubmitted_once_past_the_grace() -> None:
    """An intent whose worker died before its create: while younger than the grace it is
    neither closed nor resubmitted; past it, it is closed and its members go into one new
    batch."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    intent = BatchState("m", ("p0o1", "p0o2"), int(clock.now * 1000))
    await state.write(intent)
    async with runner(api, state, clock, max_requests=2) as r:
        waits = joins(r, (1, 2))
        await settle()
        clock.now += r.adopt_grace_s - 1
        await r.tick()
        assert api.created == [] and intent.key in open_batches(state.records)
        clock.now += 2
        await closed_then_resubmitted(r, api, state, intent.key, waits)


async def test_a_member_of_a_young_intent_that_cannot_wait_goes_real_time_at_once() -> None:
    """A member held for a young intent whose deadline, less the fallback margin, comes before
    a batch sent after the grace would end is answered in real time now (``join`` gives None);
    one with time to spare waits."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    await state.write(BatchState("m", ("p0o1", "p0o2"), int(clock.now * 1000)))
    async with runner(
        api, state, clock, max_requests=2, fallback_s=10, times=CompletionTimes(60.0)
    ) as r:
        soon = int((clock.now + r.adopt_grace_s + 60 + 10 - 1) * 1000)
        later = int((clock.now + 3600) * 1000)
        urgent = asyncio.create_task(r.join("m", 0, 1, PARAMS, soon))
        patient = asyncio.create_task(r.join("m", 0, 2, PARAMS, later))
        await settle()
        await r.tick()
        await settle()
        assert urgent.done() and urgent.result() is None and not patient.done()
        r.withdraw(0, 1)
        clock.now += r.adopt_grace_s
        await r.tick()
        assert creates_per_member(api) == {"p0o2": 1}
        api.finish("b1")
        await r.tick()
        assert await answered([patient]) == ["answer-p0o2"]


async def test_a_create_longer_than_its_timeout_is_given_up_and_its_intent_held() -> None:
    """A create still under way ``create_timeout_s`` after its intent is given up (so it ends
    within the grace another worker gives the intent): the round fails, the intent is held,
    not closed, until the grace has passed; then the members go into one new batch."""
    clock = Clock()
    api, state = SlowBatches(clock), FakeState()
    api.slow = True  # never let through: that create never reaches the API
    async with runner(api, state, clock, max_requests=2, create_timeout_s=0.05) as r:
        assert r.adopt_grace_s == 0.05 + 30
        waits = joins(r, (1, 2))
        await settle()
        try:
            await asyncio.wait_for(r.tick(), 1)
        except ModelUnavailable as exc:
            assert exc.kind == "timeout"
        else:
            raise AssertionError("the create should have been given up")
        (intent,) = open_batches(state.records).values()
        assert intent.batch_id is None and api.created == []
        await r.tick()
        assert api.created == [] and open_batches(state.records) == {intent.key: intent}
        clock.now += r.adopt_grace_s + 1
        await closed_then_resubmitted(r, api, state, intent.key, waits)


async def test_the_grace_follows_the_api_clients_timeout() -> None:
    """The create's timeout is the lane's API client's (a float, or the longest phase of a
    Timeout), 30 s when the API states none (a fake); the grace adds the margin."""
    client = anthropic.AsyncAnthropic(api_key="k", base_url="http://127.0.0.1:9", timeout=12.0)
    phased = anthropic.AsyncAnthropic(
        api_key="k", base_url="http://127.0.0.1:9", timeout=anthropic.Timeout(5.0, read=90.0)
    )
    assert AnthropicBatches(client).timeout_s == 12.0
    assert AnthropicBatches(phased).timeout_s == 90.0
    state = FakeState()
    by_client = BatchRunner(AnthropicBatches(client), state, max_age_s=60)
    assert (by_client.create_timeout_s, by_client.adopt_grace_s) == (12.0, 42.0)
    assert BatchRunner(FakeBatches(succeeded), state, max_age_s=60).adopt_grace_s == 60.0
    await client.close()
    await phased.close()


async def test_a_read_between_the_create_and_its_id_never_closes_the_running_batch() -> None:
    """An assignment's state read lands after this worker's create and before the write of
    its id: the read sees the intent and holds it. Once the batch is tracked it is no intent
    any more, so no round closes it (which would tombstone the live batch's record: after a
    restart the next owner would not see it and would create its members again)."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), SlowState(ids=True)
    async with runner(api, state, clock, max_requests=2) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2)]
        await settle()
        submitting = await held_in_write(r, state)
        r.refresh()  # other partitions assigned: the state topic is read now
        await settle()
        state.gate.set()
        await submitting
        clock.now += r.adopt_grace_s + 1
        await r.tick()
        assert len(open_batches(state.records)) == 1, "the running batch's record was closed"
        assert r.queued() == 2  # counted once
        for w in waits:
            w.cancel()


async def test_a_held_pacer_is_waited_out_before_the_intent_not_inside_the_creates_timeout() -> (
    None
):
    """A 429's hold longer than the create's timeout: the round waits for the pacer, then
    writes the intent and creates the batch (before, the create was given up while it still
    waited for the pacer, and its members waited out the grace for a batch never sent)."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    async with runner(api, state, clock, max_requests=2, rpm=60_000, create_timeout_s=0.2) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2)]
        await settle()
        assert isinstance(r._api, PacedBatches)
        r._api.pacer.hold(0.5)  # a 429's retry-after, seen on another endpoint
        with contextlib.suppress(ModelUnavailable):  # before the fix: the create gave up
            await r.tick()
        assert len(api.created) == 1
        assert not r._intents
        assert len(open_batches(state.records)) == 1
        for w in waits:
            w.cancel()
