"""The batch rate limits (lane/limits.py): calls to the batch endpoints paced under the
requests-per-minute budget, a 429 holding every call for its retry-after, and which members
of a batch held back by the queue limit cannot wait for it."""

from __future__ import annotations

import asyncio

import pytest

from escalator.errors import ApiBlocked, ModelUnavailable
from escalator.lane.batches import ItemResult
from escalator.lane.limits import (
    DEFAULT_HOLD_S,
    OVERLOADED_HOLD_S,
    PacedBatches,
    Pacer,
    too_late,
)
from tests.unit.lane.fakes import FakeBatches, encoded


class FakeTime:
    """A clock that only ``sleep`` moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def succeeded(cid: str, params: object) -> ItemResult:
    return ItemResult(cid, "succeeded")


class Timed(FakeBatches):
    """FakeBatches that notes when each call reached the API."""

    def __init__(self, time: FakeTime) -> None:
        super().__init__(succeeded)
        self.time = time
        self.calls: list[float] = []

    async def ended(self, batch_id: str) -> bool:
        self.calls.append(self.time.now)
        return await super().ended(batch_id)


async def test_polls_of_many_batches_are_spread_under_the_rpm_budget() -> None:
    """At 120 requests per minute, a round polling 30 batches does not burst: the calls reach
    the API half a second apart, 30 of them over 14.5 s, never more than 120 in any minute."""
    time = FakeTime()
    api = Timed(time)
    paced = PacedBatches(api, Pacer(120, clock=time, sleep=time.sleep))
    for i in range(30):
        await paced.ended(f"b{i}")
    gaps = [b - a for a, b in zip(api.calls, api.calls[1:], strict=False)]
    assert min(gaps) == pytest.approx(0.5) and api.calls[-1] == pytest.approx(14.5)
    for start in api.calls:
        assert sum(start <= t < start + 60 for t in api.calls) <= 120


async def test_a_429_holds_every_batch_call_for_its_retry_after_and_fails_no_item() -> None:
    """A 429 with retry-after 7 on create is raised on (the round fails, no item does) and
    counted; the next call of any endpoint waits those 7 seconds; one without retry-after
    holds the default."""
    time = FakeTime()
    api = Timed(time)
    limited: list[float] = []
    paced = PacedBatches(
        api, Pacer(6000, clock=time, sleep=time.sleep), lambda: limited.append(time.now)
    )
    api.fail = ModelUnavailable("rate limited (429)", kind="rate_limit", retry_after_s=7)
    with pytest.raises(ModelUnavailable):
        await paced.create(encoded([{"custom_id": "p0o1", "params": {}}]))
    assert limited == [0.0] and api.created == []
    await paced.ended("b1")
    assert api.calls == [pytest.approx(7.0)]
    api.fail = ModelUnavailable("rate limited (429)", kind="rate_limit")
    with pytest.raises(ModelUnavailable):
        await paced.create(encoded([{"custom_id": "p0o1", "params": {}}]))
    assert paced.pacer.held_s() == pytest.approx(DEFAULT_HOLD_S)
    # An outage that is not a rate limit holds nothing (the caller's round is retried).
    api.fail = ModelUnavailable("API error 500", kind="server_error")
    time.now += DEFAULT_HOLD_S
    with pytest.raises(ModelUnavailable):
        await paced.create(encoded([{"custom_id": "p0o1", "params": {}}]))
    assert paced.pacer.held_s() == 0 and len(limited) == 2
    # retry-after 0 holds nothing (not the default).
    api.fail = ModelUnavailable("rate limited (429)", kind="rate_limit", retry_after_s=0)
    with pytest.raises(ModelUnavailable):
        await paced.create(encoded([{"custom_id": "p0o1", "params": {}}]))
    assert paced.pacer.held_s() == 0


@pytest.mark.parametrize(
    ("fail", "held_s"),
    [
        (ApiBlocked("spend limit reached", kind="spend_limit"), DEFAULT_HOLD_S),
        (ModelUnavailable("overloaded (529)", kind="overloaded"), OVERLOADED_HOLD_S),
        (ModelUnavailable("overloaded (529)", kind="overloaded", retry_after_s=3), 3.0),
    ],
)
async def test_an_account_hold_or_an_overload_spaces_the_tries(
    fail: ModelUnavailable, held_s: float
) -> None:
    """Account trouble and a 529 create nothing: the next try waits (one a minute while the
    account is held), rather than an intent and its tombstone every round; no 429 is counted."""
    time = FakeTime()
    api = Timed(time)
    limited: list[float] = []
    paced = PacedBatches(api, Pacer(6000, clock=time, sleep=time.sleep), lambda: limited.append(0))
    api.fail = fail
    with pytest.raises(ModelUnavailable):
        await paced.create(encoded([{"custom_id": "p0o1", "params": {}}]))
    assert paced.pacer.held_s() == pytest.approx(held_s)
    assert limited == []


async def test_results_and_lists_are_paced_too() -> None:
    """Every endpoint the lane calls waits for the same pacer: create, results and list."""
    time = FakeTime()
    api = FakeBatches(succeeded)
    paced = PacedBatches(api, Pacer(60, clock=time, sleep=time.sleep))
    await paced.create(encoded([{"custom_id": "p0o1", "params": {}}]))
    assert [r.custom_id async for r in paced.results("b1")] == ["p0o1"]
    await paced.listed(0)
    assert time.now == pytest.approx(2.0)  # three calls, a second apart at 60 per minute


async def test_concurrent_callers_share_one_budget() -> None:
    """Calls made at once from several tasks are spaced as well (the pacer is one queue)."""
    time = FakeTime()
    api = Timed(time)
    paced = PacedBatches(api, Pacer(60, clock=time, sleep=time.sleep))
    await asyncio.gather(*(paced.ended(f"b{i}") for i in range(5)))
    assert sorted(api.calls) == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize(
    ("deadline_s", "late"),
    [(None, False), (1000 + 600 + 300 - 1, True), (1000 + 600 + 300 + 1, False)],
)
def test_a_held_member_goes_real_time_once_a_batch_sent_now_would_end_too_late(
    deadline_s: float | None, late: bool
) -> None:
    """Now 1000 s, expected completion 600 s, fallback margin 300 s: a member whose deadline is
    before 1900 s cannot wait for the queue; one after it can; one without a deadline (a
    measurement) always waits."""
    deadlines = {} if deadline_s is None else {"p0o1": int(deadline_s * 1000)}
    got = too_late(["p0o1"], deadlines, now_s=1000.0, expected_s=600.0, fallback_s=300.0)
    assert got == (["p0o1"] if late else [])
