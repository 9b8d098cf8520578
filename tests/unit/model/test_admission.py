"""The admission controller (``admission.py``) with a fake clock: refill, reset from headers,
rounding, estimate correction, shedding of shadows, the fall-back without headers, and a
group of processes sharing one organisation's buckets (the emulator's own) without talking."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from escalator.model.adapter import rate_limits
from escalator.model.admission import Admission, Budget, Cost, Ticket, TokenEstimate, Tuning
from escalator_dev.emulator.limits import Charge, Exceeded, Limits
from escalator_dev.emulator.rules import RateLimiter


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def headers(
    rpm: float, rpm_left: float, itpm: float, in_left: float
) -> dict[str, tuple[float, float]]:
    return {
        "requests": (rpm, rpm_left),
        "input_tokens": (itpm, in_left),
        "output_tokens": (80_000.0, 80_000.0),
    }


CALL = Cost(1.0, 200.0, 128.0)


def test_calls_pass_through_until_headers_arrive() -> None:
    """Before any response with headers (and with no cap) nothing is paced or held."""
    budget = Budget(clock=Clock())
    assert not budget.active
    assert budget.wait_s(CALL) == 0.0
    assert budget.keep_probability() == 1.0


def test_level_resets_from_headers_allowing_for_rounding_and_calls_just_sent() -> None:
    """The level is ``remaining`` minus the rounding of token counts (a thousand; requests are
    exact) minus the calls this process sent after the API wrote those headers (admitted within
    header_lag_s). The API charges a call when it admits it, so an older call in flight is
    already in ``remaining`` and is not subtracted twice."""
    clock = Clock()
    budget = Budget(clock=clock)
    budget.observe(headers(600, 500, 200_000, 150_000))
    assert budget.buckets["requests"].level == 500
    assert budget.buckets["input_tokens"].level == 149_000
    budget.admit(CALL, waited=False)
    budget.observe(headers(600, 500, 200_000, 150_000))
    assert budget.buckets["requests"].level == 499
    assert budget.buckets["input_tokens"].level == 148_800
    clock.now += 1.0  # the call is still in flight, and the API has long counted it
    budget.observe(headers(600, 499, 200_000, 150_000))
    assert budget.buckets["requests"].level == 499
    assert budget.in_flight["requests"] == 1


def test_tokens_header_is_a_bucket_of_its_own_only_when_it_differs() -> None:
    """tokens-* repeating the input (or output) header is the most restrictive limit, already
    counted; a tokens-* of its own (a combined limit) is a fourth bucket charged input plus
    output, and it can be the one that holds a call."""
    clock = Clock()
    budget = Budget(clock=clock)
    mirror = {**headers(600, 600, 200_000, 150_000), "tokens": (200_000.0, 150_000.0)}
    budget.observe(mirror)
    assert budget.buckets["tokens"].limit == 0
    combined = {**headers(600, 600, 200_000, 200_000), "tokens": (100_000.0, 1_300.0)}
    budget.observe(combined)
    assert budget.buckets["tokens"].limit == 100_000
    assert CALL.of("tokens") == 328.0
    # 1,300 left minus 1,000 of rounding is 300: below one call's 328 plus the reserve.
    assert budget.wait_s(CALL) > 0


def test_cache_reads_count_only_where_the_limit_counts_them() -> None:
    """A cache-aware input limit (the organisation's) is charged uncached input and writes; an
    input_tokens_per_minute limit (a workspace's) also the reads, learned from answers."""
    for count in (False, True):
        gate = Admission(
            Budget(clock=Clock()), TokenEstimate(1.0), max_tokens=128, count_cache_reads=count
        )
        for _ in range(50):
            gate.settle(
                Ticket(gate.cost(40), 40),
                input_tokens=60,
                cache_write_tokens=0,
                output_tokens=20,
                cache_read_tokens=700,
            )
        reads = gate.cost(40).input_tokens - gate.estimate.estimate(40)
        assert reads == (pytest.approx(700, rel=0.01) if count else 0.0)


def test_levels_refill_at_the_limit_per_minute_and_keep_a_reserve() -> None:
    """A call waits until the level covers it plus (1 - target) of the limit; the level
    refills at limit/60 per second between responses."""
    clock = Clock()
    budget = Budget(Tuning(target=0.95), clock=clock)
    budget.observe(headers(600, 10, 200_000, 200_000))
    # reserve 30 requests: 1 + 30 - 10 = 21 requests short, at 10 per second.
    assert budget.wait_s(CALL) == pytest.approx(2.1)
    clock.now += 1.0
    assert budget.wait_s(CALL) == pytest.approx(1.1)
    clock.now += 1.1
    assert budget.wait_s(CALL) == pytest.approx(0.0, abs=1e-9)


def test_token_estimates_are_corrected_by_observed_usage() -> None:
    """The estimate starts from the prior and converges on the usage the API reports."""
    est = TokenEstimate(1.3, overhead=100.0)
    rng = random.Random(1)
    for _ in range(400):
        x = rng.randint(10, 400)
        est.observe(x, 57 + 1.1 * x)
    assert est.estimate(200) == pytest.approx(57 + 220, rel=0.02)
    same = TokenEstimate(1.0)
    for _ in range(400):
        same.observe(50, 150)  # one text length: a ratio, not a slope
    assert same.estimate(50) == pytest.approx(150, rel=0.05)
    assert est.tokens("x" * 40) == 13  # 40 bytes / 4 * 1.3, rounded up


def test_shadows_are_kept_less_as_real_calls_wait_never_below_the_floor() -> None:
    """The keep probability is 1 - pressure (the recent share of real calls that waited),
    at least shadow_floor; shadow calls do not count towards pressure."""
    budget = Budget(Tuning(shadow_floor=0.05), clock=Clock())
    budget.observe(headers(600, 600, 200_000, 200_000))
    assert budget.keep_probability() == 1.0
    for _ in range(200):
        budget.admit(CALL, waited=True, real=False)
    assert budget.keep_probability() == 1.0
    for _ in range(200):
        budget.admit(CALL, waited=True)
    assert budget.keep_probability() == 0.05
    for _ in range(30):
        budget.admit(CALL, waited=False)
    assert 0.05 < budget.keep_probability() < 1.0


async def test_without_headers_the_gate_falls_back_to_pass_through() -> None:
    """Answers without rate-limit headers (a proxy, Bedrock): after headerless_calls of them
    the budget is inactive and calls go straight through, as before admission control."""
    clock = Clock()
    gate = Admission(
        Budget(Tuning(headerless_calls=5), clock=clock), TokenEstimate(1.0), max_tokens=128
    )
    gate.observe(headers(600, 0, 200_000, 0))
    assert gate.budget.active and gate.budget.wait_s(CALL) > 0
    for _ in range(5):  # calls admitted earlier, answered without headers
        ticket = Ticket(CALL, 10, gate.observations)
        gate.settle(ticket, input_tokens=100, cache_write_tokens=0, output_tokens=10)
    assert not gate.budget.active
    ticket = await asyncio.wait_for(gate.acquire("text"), 1)
    assert ticket.cost is not None


async def test_calls_without_headers_keep_no_growing_memory() -> None:
    """Behind a proxy or on Bedrock no response brings headers, so nothing ever reads the
    calls just admitted (kept for the next headers): they must not pile up, one per call."""
    clock = Clock()
    gate = Admission(Budget(clock=clock), TokenEstimate(1.0), max_tokens=128)
    for _ in range(10_000):
        clock.now += 0.01
        ticket = await gate.acquire("some text to classify")
        gate.settle(ticket, input_tokens=100, cache_write_tokens=0, output_tokens=10)
    assert not gate.budget.active
    # Only the calls of the last header_lag_s (0.05 s) can still be missing from headers.
    assert len(gate.budget._recent) <= 6


def test_a_limit_arriving_after_calls_passed_through_starts_from_the_headers() -> None:
    """Calls that passed through (no headers yet, or the headers forgotten) draw nothing from
    buckets that pace nothing; when a limit arrives its level, quota and allowance start from
    the headers: remaining, less the rounding and the calls sent within header_lag_s."""
    clock = Clock()
    budget = Budget(Tuning(headerless_calls=1), share=lambda: 0.5, clock=clock)
    for _ in range(2):
        for _ in range(100):
            clock.now += 0.1
            budget.admit(CALL, waited=False)
        assert not budget.active
        budget.observe(headers(600, 500, 200_000, 150_000))
        assert budget.active
        req, inp = budget.buckets["requests"], budget.buckets["input_tokens"]
        # The last call was admitted just now: the API had not counted it yet.
        assert req.level == 499 and inp.level == 149_000 - 200
        assert req.quota == 0.5 * (499 - 0.05 * 600)
        assert req.allowance == max(req.rate * 1.0, 1.0)
        budget.no_headers()  # the headers go away; the next round passes through again
        assert budget.buckets["requests"].limit == 0
    assert budget.in_flight["requests"] == 200


def test_token_count_of_a_text_is_its_utf8_length_by_the_factor() -> None:
    """ASCII texts are counted without encoding them; others by their UTF-8 bytes."""
    est = TokenEstimate(1.0)
    assert est.tokens("abcd" * 10) == 10
    assert est.tokens("é" * 20) == 10  # two bytes each
    assert est.tokens("日本" * 4) == 6  # 24 bytes
    assert est.tokens("") == 0


def test_an_unpredicted_429_halves_the_rates_once_per_cooldown() -> None:
    """The backstop: a 429 the budget did not prevent halves every rate, once per second."""
    clock = Clock()
    budget = Budget(clock=clock)
    budget.observe(headers(600, 600, 200_000, 200_000))
    before = budget.buckets["requests"].rate
    budget.on_rate_limited()
    budget.on_rate_limited()
    assert budget.buckets["requests"].rate == pytest.approx(before / 2)
    clock.now += 1.5
    budget.on_rate_limited()
    assert budget.buckets["requests"].rate == pytest.approx(before / 4)


def test_a_cap_is_split_by_partition_share_and_paces_without_headers() -> None:
    """A deployment-wide cap of 600 RPM, a third of the partitions: this process admits at
    most 200 calls a minute even when the API sends no headers."""
    clock = Clock()
    budget = Budget(cap=(600, 10**9, 10**9), share=lambda: 1 / 3, clock=clock)
    assert budget.active
    admitted = 0
    for _ in range(60 * 100):
        clock.now += 0.01
        while budget.wait_s(CALL) <= 0:
            budget.admit(CALL, waited=False)
            admitted += 1
    assert 100 <= admitted <= 205


@dataclass
class Pod:
    budget: Budget
    alive: bool = True
    pending: list[tuple[float, Cost, Charge]] = field(default_factory=list)


def _run_group(
    seconds: float,
    n: int,
    limits: Limits,
    clock: Clock,
    events: dict[float, str],
    call: Cost = CALL,
    latency_s: float = 0.2,
) -> tuple[int, int, dict[int, int]]:
    """``n`` pods with unbounded demand call a shared bucket set (the emulator's, which charges
    a call when it is admitted and holds its output reservation until the answer, 200 ms
    later; a 429 comes back at once); each pod's share is one over the pods alive, as the
    consumer group's assignment would make it. Events kill or restart a pod at a time.
    Returns (answered, 429s, answered per second)."""
    alive = [n]

    def share() -> float:
        return 1 / alive[0]

    pods = [Pod(Budget(share=share, clock=clock)) for _ in range(n)]
    answered = limited = 0
    per_second: dict[int, int] = {}
    dt = 0.005
    steps = int(seconds / dt)
    start = clock.now
    for step in range(steps):
        clock.now = start + step * dt
        t = round(step * dt, 3)
        if t in events:
            action, _, index = events[t].partition(":")
            pod = pods[int(index)]
            if action == "kill":
                pod.alive = False
                alive[0] -= 1
            else:
                pods[int(index)] = Pod(Budget(share=share, clock=clock))
                alive[0] += 1
        for pod in pods:
            due = [p for p in pod.pending if p[0] <= clock.now]
            pod.pending = [p for p in pod.pending if p[0] > clock.now]
            for _, cost, charge in due:
                charge.settle(20)
                pod.budget.observe(rate_limits(limits.headers()))
                pod.budget.settle(cost, Cost(1, cost.input_tokens, 20))
                answered += 1
                per_second[int(t)] = per_second.get(int(t), 0) + 1
            if not pod.alive:
                continue
            # Unbounded demand: 64 in flight at most, as many admitted as the budget allows;
            # before any headers, one call (the cache warm-up goes alone).
            room = 64 if pod.budget.active else 1
            while len(pod.pending) < room and pod.budget.wait_s(call) <= 0:
                pod.budget.admit(call, waited=True)
                outcome = limits.admit(int(call.input_tokens), 0, int(call.output_tokens))
                if isinstance(outcome, Exceeded):
                    limited += 1
                    pod.budget.observe(rate_limits(limits.headers()))
                    pod.budget.settle(call, None)
                    pod.budget.on_rate_limited()
                    break
                pod.pending.append((clock.now + latency_s, call, outcome))
    return answered, limited, per_second


def test_three_processes_share_one_limit_without_coordination() -> None:
    """Three budgets, one organisation's buckets (600 RPM): no 429s, and the group uses at
    least 90% of the limit after the ramp; with one killed, the other two take up its share;
    a restarted one ramps in without 429s."""
    clock = Clock()
    limits = Limits(RateLimiter(600, 200_000, 80_000, clock=clock), clock=clock)
    answered, limited, per_second = _run_group(
        300, 3, limits, clock, {100.0: "kill:0", 200.0: "restart:0"}
    )
    assert limited == 0 and answered > 0
    used = [per_second.get(s, 0) for s in range(300)]
    for lo, hi in ((20, 100), (130, 200), (230, 300)):
        window = sum(used[lo:hi]) / ((hi - lo) * 10.0)
        assert 0.9 <= window <= 1.05, (lo, hi, window)


def test_an_output_limit_bound_by_reservations_is_used_without_429s() -> None:
    """Calls of 2 s that reserve 2,048 output tokens when admitted and keep 20, against
    60,000 OTPM: the limit allows 3,000 such calls a minute (50/s), and the reservations bound
    how fast a group may get there. Three budgets, each drawing only its share of what a
    reading leaves free and pacing the output calls keep: no 429s, and at least 40% of the
    net rate after the first minute (they ramp; the emulator's old accounting, which charged
    20 tokens at the end, let any burst through)."""
    clock = Clock()
    limits = Limits(RateLimiter(6_000, 10_000_000, 60_000, clock=clock), clock=clock)
    call = Cost(1.0, 200.0, 2048.0, 20.0)
    answered, limited, per_second = _run_group(300, 3, limits, clock, {}, call, 2.0)
    assert limited == 0 and answered > 0
    steady = sum(per_second.get(s, 0) for s in range(60, 300)) / 240
    assert steady >= 0.4 * 60_000 / 20 / 60, steady


async def test_shadow_calls_yield_to_real_calls_that_arrive_soon_after() -> None:
    """At the gate, a waiting shadow call goes after real calls that arrived up to
    shadow_delay_s later; a cancelled waiter leaves nothing in flight."""
    clock = Clock()
    gate = Admission(Budget(clock=clock), TokenEstimate(1.0), max_tokens=128)
    gate.observe(headers(600, 0, 200_000, 200_000))  # nothing left: every call waits
    order: list[str] = []

    async def call(name: str, shadow: bool) -> None:
        await gate.acquire("text", shadow=shadow)
        order.append(name)

    shadow = asyncio.create_task(call("shadow", True))
    await asyncio.sleep(0)
    real = [asyncio.create_task(call(f"real{i}", False)) for i in range(2)]
    gone = asyncio.create_task(call("cancelled", False))
    await asyncio.sleep(0.01)
    assert gate.waiting == 4 and not order
    gone.cancel()
    await asyncio.sleep(0)
    clock.now += 120  # refills the allowance and the level
    gate.observe(headers(600, 600, 200_000, 200_000))
    await asyncio.wait_for(asyncio.gather(shadow, *real), 5)
    assert order == ["real0", "real1", "shadow"]
    assert gate.budget.in_flight["requests"] == 3
