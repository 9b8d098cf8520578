"""Admission control from the API's own rate-limit headers: one controller per rate-limit group
(a model family, ``profiles.rate_limit_group``) and process,
in front of every model call, so that the pods of a deployment spend the organisation's rate
limit instead of finding it with 429s. No pod talks to another: each sees the organisation's
buckets only through the ``anthropic-ratelimit-*`` headers of its own responses.

:class:`Budget` is the synchronous core (a clock is injected, so it is tested with a fake one).
Per bucket kind (requests, input tokens, output tokens, and tokens when that header is a limit
of its own) it keeps

- the **level**: what the organisation has left, reset from every response's ``remaining``
  (minus the API's rounding of token counts to the thousand, minus this process's calls sent
  since the API wrote those headers), refilled at ``limit / 60`` per second between responses,
  and drawn down by each call admitted. A call is admitted only when every level covers its
  estimate plus a reserve of ``(1 - target) * limit``: the hard floor, reached only if the
  pacing below misjudged. Every process reads the same headers, so between two readings each
  draws only its ``share`` of what the last one left above the reserve (its **quota**):
  processes admitting on one stale reading would overshoot together, which a limit bound by
  large output reservations (``max_tokens`` held while a call runs) turns into 429s.
- the **allowance**: this process's own pacing bucket, refilled at its admitted rate ``rate``,
  drawn by what a call keeps (for output, the real output learned from answers, not the
  reservation that comes back when it ends), the units in which the headers' slope measures
  the group's consumption.
  This is how pods share the limit without a coordinator. ``rate`` is steered from the
  headers (see :meth:`Budget._control`):

  * while the organisation's bucket reads full, the group is below the limit, and a process
    whose allowance is what holds its calls grows ``rate``: doubling every
    ``ramp_double_s`` after start-up or a long idle (slow start, from ``ramp_start`` of its
    share), by ``accel * limit * share`` per second after the first sign of pressure;
  * once the bucket reads below full, the slope of ``remaining`` over the last
    ``window_s`` gives the whole group's consumption ``C = refill - slope`` (whoever made it),
    and, above ``goal = target * refill - dip / refill_s``, every process slows by the same
    factor ``goal / C`` (keeping its observed share of the consumption); below it, each takes
    its ``share`` of the room left (additive, so shares converge as in AIMD), and is pulled
    towards ``share * goal`` with the time constant ``fair_s``.

  ``share`` is the process's share of its topic's partitions (from the consumer group: Kafka
  is the one thing the pods share); it only scales the start rate and the additive terms, so
  the group's acceleration does not depend on how many pods there are, and it splits an
  optional hard ``cap`` (per model, per minute, for the whole deployment).

What is counted is what the API counts (Rate limits; the Admin API's limiter types). The API
charges a call when it admits it: its request, its input (uncached input and cache writes; cache
reads too under an ``input_tokens_per_minute`` limit, such as a workspace may set, but not under
the organisation's cache-aware one, ``ESCALATOR_ADMISSION_CACHE_READS``), and ``max_tokens`` of
output, reserved until the response ends and then corrected to the real output. So a
response's ``remaining`` already counts this process's calls in flight, and the level subtracts
only the calls admitted within ``header_lag_s`` before the headers were read (sent after the API
wrote them). ``tokens-*`` is read too: where it repeats the input or the output header (the
Claude API's "most restrictive limit") it adds nothing; where it differs (a combined input +
output limit, as Claude Platform on AWS documents it) it is a fourth bucket, charged input plus
output.

An unpredicted 429 halves every rate (at most once a second); the in-flight AIMD in
``limits.py`` stays as the backstop. When responses carry no headers (Bedrock, a proxy), the
budget is inactive and calls pass straight through (the behaviour before admission control),
or, with a cap, are paced at the cap's share.

:class:`Admission` is the asynchronous gate around a budget: a queue ordered by arrival, in
which a shadow (measurement) call yields to real calls that arrived up to ``shadow_delay_s``
after it, and :meth:`Admission.shadow_keep` is the probability with which the strong tier
keeps a shadow call at all: ``1 - pressure`` (the recent share of real calls that had to wait),
never below ``shadow_floor``. The rate actually applied is recorded on each decision, so the
calibration's inverse-probability weights stay right.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from escalator.config import AdmissionSettings, default_of

KINDS = ("requests", "input_tokens", "output_tokens", "tokens")
#: The API rounds token ``remaining`` to the thousand; the request count is exact.
ROUNDING = {"requests": 0.0, "input_tokens": 1000.0, "output_tokens": 1000.0, "tokens": 1000.0}
#: ``{kind: (limit, remaining)}`` from one response's headers (``model.rate_limits``).
Limits = Mapping[str, tuple[float, float]]
#: (RPM, ITPM, OTPM): a hard cap per model for the whole deployment.
Cap = tuple[float, float, float]


class Cost(NamedTuple):
    """What one call draws from each bucket: ``output_tokens`` is what the API reserves when
    it admits the call (``max_tokens``), held until the call ends; ``paced_output`` what it
    is expected to keep (the real output, learned from answers; None: the reservation).

    A named tuple, not a frozen dataclass: two are built per model call, and a frozen
    dataclass's ``__init__`` costs four times as much (B1 in BENCHMARKS.md)."""

    requests: float
    input_tokens: float
    output_tokens: float
    paced_output: float | None = None

    def of(self, kind: str) -> float:
        """Drawn from the level (what the headers will show while the call runs)."""
        if kind == "requests":
            return self.requests
        if kind == "tokens":
            return self.input_tokens + self.output_tokens
        return self.input_tokens if kind == "input_tokens" else self.output_tokens

    def pace(self, kind: str) -> float:
        """Drawn from this process's pacing allowance: what the group's consumption, measured
        from the headers over time, counts (the reservation comes back when the call ends)."""
        if self.paced_output is None or kind in ("requests", "input_tokens"):
            return self.of(kind)
        if kind == "tokens":
            return self.input_tokens + self.paced_output
        return self.paced_output

    def draws(self) -> tuple[float, float, float, float]:
        """:meth:`of` for every kind, in the order of ``KINDS``."""
        return (
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.input_tokens + self.output_tokens,
        )

    def paces(self) -> tuple[float, float, float, float]:
        """:meth:`pace` for every kind, in the order of ``KINDS``."""
        out = self.output_tokens if self.paced_output is None else self.paced_output
        return (self.requests, self.input_tokens, out, self.input_tokens + out)


@dataclass(frozen=True, slots=True)
class Tuning:
    """The controller's constants. Only ``target`` is configurable
    (``ESCALATOR_ADMISSION_TARGET``); the others are documented in docs/OPERATIONS.md."""

    #: Fraction of each limit the group aims to use.
    target: float = default_of(AdmissionSettings, "target")
    #: The first rate after start-up or idle: this fraction of the process's share of target.
    ramp_start: float = 0.5
    #: Slow start: the rate at most doubles this often (the acceleration limit).
    ramp_double_s: float = 2.0
    #: After the first pressure: the group grows by this fraction of the limit per second.
    accel: float = 0.02
    #: Time constant of the pull towards this process's share of the goal (below full).
    fair_s: float = 20.0
    #: Header samples used for the slope of ``remaining``.
    window_s: float = 5.0
    #: Time constant of the proportional correction.
    control_s: float = 5.0
    #: A dip below the full bucket is repaid over this long.
    refill_s: float = 120.0
    #: Depth of the pacing bucket, in seconds of the rate.
    burst_s: float = 1.0
    #: After this long without a call, ramp again (slow start).
    idle_s: float = 30.0
    #: Answers without rate-limit headers before the budget falls back to pass-through.
    headerless_calls: int = 20
    #: A shadow call is never kept with a lower probability (it keeps every estimate defined).
    shadow_floor: float = 0.05
    #: A shadow call yields to real calls that arrived up to this much later.
    shadow_delay_s: float = 10.0
    #: Unpredicted 429s halve the rates at most once per this.
    cut_cooldown_s: float = 1.0
    #: Calls admitted this recently are taken as not yet in the headers being read.
    header_lag_s: float = 0.05


@dataclass(slots=True)
class _Bucket:
    kind: str
    #: Per minute, from the headers (0: unknown).
    limit: float = 0.0
    #: Hard cap for the deployment, per minute (0: none).
    cap: float = 0.0
    #: Level, quota and allowance mean something only while the bucket paces calls (a limit
    #: or a cap); without, nothing reads or draws them, and a limit arriving sets them anew.
    level: float = 0.0
    rate: float = 0.0
    allowance: float = 0.0
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    last_full: float = -math.inf
    #: Since when every sample has read full (-inf: the last one did not).
    full_since: float = -math.inf
    #: The first measurement below full has been acted on.
    corrected: bool = False
    slow_start: bool = True
    #: The allowance held a call since the last control step.
    limited: bool = False
    #: The group's consumption measured from the headers (units per second; nan: bucket full).
    group_rate: float = math.nan
    #: This process's share of the level the last reading left above the reserve.
    quota: float = 0.0


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value)."""
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var <= 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in samples) / var


class Budget:
    """The three buckets of one model, as this process sees them, and its admitted rates."""

    def __init__(
        self,
        tuning: Tuning | None = None,
        *,
        cap: Cap | None = None,
        share: Callable[[], float] = lambda: 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tuning = tuning or Tuning()
        self._clock = clock
        self._share = share
        self.buckets = {k: _Bucket(k) for k in KINDS}
        if cap is not None:
            for kind, value in zip(KINDS[:3], cap, strict=True):
                self.buckets[kind].cap = float(value)
        #: The buckets in the order of ``KINDS``; those that pace calls, with their index
        #: there; those with a limit from the headers (see :meth:`_limits_changed`).
        self._kinds = tuple(self.buckets.values())
        self._pacing: tuple[tuple[int, _Bucket], ...] = ()
        self._headed: tuple[_Bucket, ...] = ()
        self._active = False
        self._limits_changed()
        self.in_flight = dict.fromkeys(KINDS, 0.0)
        #: (admitted at, cost) of recent calls: those the next headers may not count yet.
        self._recent: deque[tuple[float, Cost]] = deque()
        now = clock()
        self._advanced = now
        self._controlled = now
        self._last_call = -math.inf
        self._last_cut = -math.inf
        self._headerless = 0
        #: Recent share of real calls that had to wait (EWMA over calls).
        self.pressure = 0.0

    # -- state ------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """False until a response brought headers (and with no cap): calls pass through.
        Read on every call; kept up to date where a limit or cap changes."""
        return self._active

    def _limits_changed(self) -> None:
        """Called wherever a bucket's limit changes (its cap never does): which buckets pace
        calls, which have a limit, and whether the budget is active. The calls' hot path
        loops over these only; a bucket that paces nothing keeps no level, quota or
        allowance (they are set anew when a limit arrives, see :meth:`observe`)."""
        kinds = self._kinds
        self._pacing = tuple((i, b) for i, b in enumerate(kinds) if b.limit > 0 or b.cap > 0)
        self._headed = tuple(b for b in kinds if b.limit > 0)
        self._active = bool(self._pacing)

    def share(self) -> float:
        return min(1.0, max(0.01, self._share()))

    def _refill(self, b: _Bucket) -> float:
        """The bucket's refill per second as far as this process may use it."""
        if b.limit > 0:
            return b.limit / 60.0
        return b.cap * self.share() / 60.0

    def _ceiling(self, b: _Bucket) -> float:
        ceiling = b.limit / 60.0 if b.limit > 0 else math.inf
        if b.cap > 0:
            ceiling = min(ceiling, b.cap * self.share() / 60.0)
        return ceiling

    def _start_rate(self, b: _Bucket) -> float:
        t = self.tuning
        own = b.limit / 60.0 * self.share() if b.limit > 0 else self._refill(b)
        return min(self._ceiling(b), t.ramp_start * t.target * own)

    def _paced(self, b: _Bucket) -> bool:
        return b.limit > 0 or b.cap > 0

    def rates_per_minute(self) -> dict[str, float]:
        """This process's admitted rate per kind (per minute, as limits are stated)."""
        return {k: b.rate * 60.0 for k, b in self.buckets.items() if self._paced(b)}

    # -- time -------------------------------------------------------------------------------
    def _advance(self, now: float) -> float:
        """Refill every paced bucket up to ``now``. Returns the share it read (-1: none),
        for its caller to reuse: ``share()`` asks the consumer, and it cannot change within
        one call of this class.

        Run up to three times per model call, so it avoids ``min``/``max``: ``b if b < a
        else a`` is ``min(a, b)`` (``max``: ``>``), the same value for every input."""
        dt = now - self._advanced
        if not dt > 0.0:
            dt = 0.0
        self._advanced = now
        last = self._last_call
        if now - last > self.tuning.idle_s and last > -math.inf:
            # A long idle: the group may have moved on; ramp again from the start rate.
            for _, b in self._pacing:
                b.rate = min(b.rate, self._start_rate(b))
                b.slow_start = True
            self._last_call = now
        if not self._pacing:
            return -1.0
        burst_s = self.tuning.burst_s
        share = self.share() if self._headed else -1.0
        for _, b in self._pacing:
            limit = b.limit
            if limit > 0:
                level = b.level + dt * limit / 60.0
                b.level = level if level < limit else limit
                quota = b.quota + dt * limit / 60.0 * share
                b.quota = quota if quota < limit else limit
            rate = b.rate
            if rate <= 0:
                rate = b.rate = self._start_rate(b)
                b.allowance = self._depth(b)
            depth = rate * burst_s
            if 1.0 > depth:
                depth = 1.0
            allowance = b.allowance + dt * rate
            b.allowance = allowance if allowance < depth else depth
        return share

    def _depth(self, b: _Bucket) -> float:
        """The pacing bucket's depth: ``burst_s`` of the rate, and at least one unit."""
        return max(b.rate * self.tuning.burst_s, 1.0)

    # -- headers ----------------------------------------------------------------------------
    def observe(self, limits: Limits) -> None:
        """One response's ``{kind: (limit, remaining)}``."""
        now = self._clock()
        share = self._advance(now)  # -1: read when first needed
        seen = False
        self._trim_recent(now)
        recent = self._recent
        t = self.tuning
        for i, b in enumerate(self._kinds):
            kind = b.kind
            got = limits.get(kind)
            if i == 3 and got is not None:
                if got in (limits.get("input_tokens"), limits.get("output_tokens")):
                    got = None  # the most restrictive of the two, already counted
            if got is None or got[0] <= 0:
                continue
            seen = True
            limit, remaining = float(got[0]), float(got[1])
            if b.limit != limit:
                b.limit = limit  # first sight, or the organisation changed tier
                self._limits_changed()
                b.samples.clear()
                if b.rate <= 0 or b.slow_start:
                    b.rate = self._start_rate(b)
                    b.allowance = self._depth(b)
            low = max(0.0, min(limit, remaining - ROUNDING[kind]))
            # What the calls sent since the API wrote these headers drew (``Cost.of``).
            if i == 0:
                lagged = sum([c.requests for _, c in recent])
            elif i == 1:
                lagged = sum([c.input_tokens for _, c in recent])
            elif i == 2:
                lagged = sum([c.output_tokens for _, c in recent])
            else:
                lagged = sum([c.input_tokens + c.output_tokens for _, c in recent])
            b.level = max(0.0, low - lagged)
            reserve = (1.0 - t.target) * limit
            if share < 0:
                share = self.share()
            b.quota = share * max(0.0, b.level - reserve)
            samples = b.samples
            samples.append((now, remaining))
            while samples and samples[0][0] < now - t.window_s:
                samples.popleft()
            if remaining >= limit - self._tolerance(b):
                b.last_full = now
                if b.full_since == -math.inf:
                    b.full_since = now
                b.corrected = False
            else:
                b.full_since = -math.inf
        if seen:
            self._headerless = 0
            self._control(now)

    def _trim_recent(self, now: float) -> None:
        """Forget the calls the next headers will have counted (admitted before the lag)."""
        recent = self._recent
        while recent and recent[0][0] < now - self.tuning.header_lag_s:
            recent.popleft()

    def _tolerance(self, b: _Bucket) -> float:
        """How far below the limit ``remaining`` may read while the bucket counts as full: one
        call's worth and the rounding."""
        if b.kind == "requests":
            return max(2.0, 0.01 * b.limit)
        return max(1.5 * ROUNDING[b.kind], 0.01 * b.limit)

    def _control(self, now: float) -> None:
        """Steer each bucket's rate from what the headers say about the whole group."""
        dt = now - self._controlled
        if dt < 0.05:
            return
        self._controlled = now
        dt = min(dt, 2.0)
        t = self.tuning
        share = self.share()
        for b in self.buckets.values():
            if b.limit <= 0:
                if b.cap > 0 and b.limited:
                    # A cap and no headers: ramp up to the cap's share, nothing else to go by.
                    b.rate = min(self._ceiling(b), b.rate * 2.0 ** (dt / t.ramp_double_s))
                b.limited = False
                continue
            refill = b.limit / 60.0
            latest = b.samples[-1][0] if b.samples else -math.inf
            if b.last_full >= latest:
                # The organisation's bucket reads full: the group is below the limit.
                b.group_rate = math.nan
                if b.limited:
                    if b.slow_start or now - b.full_since > t.window_s:
                        # Start-up, idle, or headroom for a while (a peer left): the
                        # acceleration limit, doubling at most every ramp_double_s.
                        b.rate *= 2.0 ** (dt / t.ramp_double_s)
                    else:
                        b.rate += t.accel * refill * share * dt
            else:
                interior = [s for s in b.samples if s[0] > b.last_full]
                if len(interior) >= 3 and interior[-1][0] - interior[0][0] >= 1.0:
                    used = max(0.01 * refill, refill - _slope(interior))
                    b.group_rate = used
                    dip = b.limit - interior[-1][1]
                    goal = max(0.1 * t.target * refill, t.target * refill - dip / t.refill_s)
                    # The reading that ends a ramp is acted on at once (the ramp overshot);
                    # later ones with the control time constant.
                    gain = 1.0 if b.slow_start else min(1.0, dt / t.control_s)
                    b.slow_start = False
                    if used > goal:
                        # Too fast: every process slows by the same factor, keeping its share.
                        b.rate *= 1.0 - gain * (1.0 - goal / used)
                    elif b.limited:
                        # Room left: the group takes it, each process by its share (additive,
                        # so that shares converge as in AIMD).
                        b.rate += gain * share * (goal - used)
                    if b.limited:
                        # Towards this process's share of the goal (its partitions' share).
                        b.rate += (share * goal - b.rate) * min(1.0, dt / t.fair_s)
            b.rate = min(self._ceiling(b), max(0.005 * refill, b.rate))
            b.limited = False

    # -- calls ------------------------------------------------------------------------------
    def wait_s(self, cost: Cost) -> float:
        """Seconds until ``cost`` can be admitted (0: now). Marks the buckets that hold it."""
        now = self._clock()
        share = self._advance(now)
        if now - self._controlled >= 0.05:  # what _control checks first: skip the call
            self._control(now)
        wait = 0.0
        if not self._pacing:
            return wait
        t = self.tuning
        reserve_share = 1.0 - t.target
        burst_s = t.burst_s
        needs = cost.draws()
        paces = cost.paces()
        for i, b in self._pacing:
            limit = b.limit
            if limit > 0:
                need = needs[i]
                reserve = reserve_share * limit
                need_level = min(need, limit - reserve)
                short = need_level + reserve - b.level
                if short > 0:
                    wait = max(wait, short / (limit / 60.0))
                # This process's part of what the last reading left free: every process reads
                # the same headers, so between two readings each draws only its share of it.
                # (``share`` was read by _advance: this bucket has a limit.)
                short = need_level - b.quota
                if short > 0:
                    wait = max(wait, short / (limit / 60.0 * share))
            rate = b.rate
            if rate > 0:
                need_pace = min(paces[i], max(rate * burst_s, 1.0))
                short = need_pace - b.allowance
                if short > 0:
                    b.limited = True
                    wait = max(wait, short / rate)
        return wait

    def admit(self, cost: Cost, *, waited: bool, real: bool = True) -> None:
        now = self._clock()
        self._advance(now)
        self._last_call = now
        requests, input_tokens, output_tokens, _ = cost
        both = input_tokens + output_tokens
        in_flight = self.in_flight
        in_flight["requests"] += requests
        in_flight["input_tokens"] += input_tokens
        in_flight["output_tokens"] += output_tokens
        in_flight["tokens"] += both
        if self._pacing:  # a bucket that paces nothing keeps no level (see _limits_changed)
            needs = (requests, input_tokens, output_tokens, both)  # cost.draws()
            paces = cost.paces()
            for i, b in self._pacing:
                need = needs[i]
                b.level -= need
                b.quota -= need
                b.allowance -= paces[i]
        # Trimmed here as well as in ``observe``: without headers (a proxy, Bedrock) nothing
        # else would, and the list would grow by one entry per call.
        recent = self._recent
        since = now - self.tuning.header_lag_s
        while recent and recent[0][0] < since:
            recent.popleft()
        recent.append((now, cost))
        if real:
            self.pressure += 0.05 * ((1.0 if waited else 0.0) - self.pressure)

    def settle(self, cost: Cost, actual: Cost | None = None) -> None:
        """A call admitted with ``cost`` ended; ``actual`` is what the API charged (None: no
        answer). The API gives back the unused output reservation when the response ends; the
        next headers show it, so the level is not credited here."""
        requests, input_tokens, output_tokens, _ = cost
        in_flight = self.in_flight
        # Never below 0: ``v if v > 0.0 else 0.0`` is ``max(0.0, v)`` (see _advance).
        v = in_flight["requests"] - requests
        in_flight["requests"] = v if v > 0.0 else 0.0
        v = in_flight["input_tokens"] - input_tokens
        in_flight["input_tokens"] = v if v > 0.0 else 0.0
        v = in_flight["output_tokens"] - output_tokens
        in_flight["output_tokens"] = v if v > 0.0 else 0.0
        v = in_flight["tokens"] - (input_tokens + output_tokens)
        in_flight["tokens"] = v if v > 0.0 else 0.0

    def no_headers(self) -> None:
        """An answer came without rate-limit headers; after enough of them in a row the
        headers are taken to be gone (a proxy, Bedrock) and calls pass through."""
        self._headerless += 1
        if self._headerless < self.tuning.headerless_calls or not self._headed:
            return  # not yet, or nothing (left) to forget
        for b in self._headed:
            b.limit = 0.0
            b.samples.clear()
            b.group_rate = math.nan
            if b.cap <= 0:
                b.rate = 0.0
        self._limits_changed()

    def on_rate_limited(self) -> None:
        """A 429 the budget did not prevent: halve every rate (once per cooldown)."""
        now = self._clock()
        if now - self._last_cut < self.tuning.cut_cooldown_s:
            return
        self._last_cut = now
        for b in self.buckets.values():
            if self._paced(b) and b.rate > 0:
                b.rate = max(self._refill(b) * 0.005, b.rate / 2.0)
                b.allowance = min(b.allowance, self._depth(b))
                b.slow_start = False

    def keep_probability(self) -> float:
        """The probability of keeping a shadow call now: 1 while the budget is loose."""
        if not self.active:
            return 1.0
        return max(self.tuning.shadow_floor, 1.0 - self.pressure)


class TokenEstimate:
    """Uncached input tokens of a call, ``a + b * x`` with ``x`` the text's tokens by the
    model's tokenizer factor (a token per 4 UTF-8 bytes, times the factor), fitted to the
    usage the API reports: exponentially weighted least squares, starting from a prior of
    ``overhead`` and slope 1 that the first answers wash out."""

    def __init__(self, factor: float, overhead: float = 100.0, decay: float = 0.99) -> None:
        self.factor = factor
        self._decay = decay
        # Prior: two pseudo-observations (0, overhead) and (100, overhead + 100), weight 1 each.
        self._w = 2.0
        self._sx = 100.0
        self._sy = 2 * overhead + 100.0
        self._sxx = 100.0**2
        self._sxy = 100.0 * (overhead + 100.0)
        #: Tokens a call that writes the prompt cache adds (learned from cache writes seen).
        self.cache_write = 2048.0
        #: Cache reads per call (an average over recent calls), for limits that count them.
        self.cache_read = 0.0

    def tokens(self, text: str) -> int:
        # An ASCII text's UTF-8 is as long as the text (isascii is a flag: no copy made).
        size = len(text) if text.isascii() else len(text.encode())
        return math.ceil(size / 4 * self.factor)

    def estimate(self, x: float) -> float:
        mx = self._sx / self._w
        my = self._sy / self._w
        var = self._sxx / self._w - mx * mx
        if var > 1.0:
            slope = (self._sxy / self._w - mx * my) / var
            if slope > 0:
                return max(1.0, my + slope * (x - mx))
        return max(1.0, my * (x + 1.0) / (mx + 1.0))

    def observe(
        self, x: float, actual: float, cache_write: float = 0.0, cache_read: float = 0.0
    ) -> None:
        self.cache_read += 0.1 * (cache_read - self.cache_read)
        d = self._decay
        self._w = self._w * d + 1.0
        self._sx = self._sx * d + x
        self._sy = self._sy * d + actual
        self._sxx = self._sxx * d + x * x
        self._sxy = self._sxy * d + x * actual
        if cache_write > 0:
            self.cache_write = cache_write


class AdmissionObserver(Protocol):
    """What the gate reports (``metrics.AdmissionSeries``; a no-op when absent)."""

    def waited(self, seconds: float, held: bool) -> None: ...
    def waiting(self, delta: int) -> None: ...
    def estimated(self, estimate: Cost, actual: Cost) -> None: ...
    def used(self, actual: Cost) -> None: ...
    def rate_limited(self) -> None: ...


class _Quiet:
    def waited(self, seconds: float, held: bool) -> None:
        pass

    def waiting(self, delta: int) -> None:
        pass

    def estimated(self, estimate: Cost, actual: Cost) -> None:
        pass

    def used(self, actual: Cost) -> None:
        pass

    def rate_limited(self) -> None:
        pass


@dataclass(slots=True)
class Ticket:
    """One admitted call; hand it back to :meth:`Admission.settle` or :meth:`~.failed`."""

    cost: Cost | None
    x: int = 0
    #: :attr:`Admission.observations` when it was admitted.
    seen: int = 0


@dataclass(slots=True)
class _Waiter:
    cost: Cost
    shadow: bool
    since: float
    future: asyncio.Future[None]


class Admission:
    """The gate in front of one model's calls (one per model and process)."""

    def __init__(
        self,
        budget: Budget,
        estimate: TokenEstimate,
        *,
        max_tokens: int,
        enabled: bool = True,
        observer: AdmissionObserver | None = None,
        count_cache_reads: bool = False,
    ) -> None:
        self.budget = budget
        self.estimate = estimate
        self.max_tokens = max_tokens
        #: The input limit counts cache reads (``input_tokens_per_minute``, a workspace's);
        #: False: the organisation's cache-aware limit (ESCALATOR_ADMISSION_CACHE_READS).
        self.count_cache_reads = count_cache_reads
        #: Output tokens a call keeps (an average over recent answers); until the first
        #: answer, the whole reservation.
        self.output_estimate = float(max_tokens)
        #: False: AIMD only (ESCALATOR_ADMISSION=off); usage and 429s are still counted.
        self.enabled = enabled
        self._observer: AdmissionObserver = observer or _Quiet()
        self._heap: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        #: Responses whose rate-limit headers were observed.
        self.observations = 0

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, w in self._heap if not w.future.done())

    def cost(self, x: int, *, warm: bool = False) -> Cost:
        tokens = self.estimate.estimate(x)
        if warm:
            tokens += self.estimate.cache_write
        elif self.count_cache_reads:
            tokens += self.estimate.cache_read
        return Cost(1.0, tokens, float(self.max_tokens), self.output_estimate)

    async def acquire(self, text: str, *, shadow: bool = False, warm: bool = False) -> Ticket:
        """Wait until the call may be made."""
        x = self.estimate.tokens(text)
        if not self.enabled:
            return Ticket(None, x)
        cost = self.cost(x, warm=warm)
        if not self.budget.active:
            self.budget.admit(cost, waited=False, real=not shadow)
            return Ticket(cost, x, self.observations)
        if not self._heap and self.budget.wait_s(cost) <= 0:
            self.budget.admit(cost, waited=False, real=not shadow)
            self._observer.waited(0.0, False)
            return Ticket(cost, x, self.observations)
        loop = asyncio.get_running_loop()
        since = loop.time()
        waiter = _Waiter(cost, shadow, since, loop.create_future())
        key = since + (self.budget.tuning.shadow_delay_s if shadow else 0.0)
        heapq.heappush(self._heap, (key, next(self._seq), waiter))
        self._observer.waiting(1)
        try:
            self._schedule()
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.budget.settle(cost, None)  # admitted, but the caller is gone
            else:
                waiter.future.cancel()
            raise
        finally:
            self._observer.waiting(-1)
            if self._heap:
                self._schedule()
        self._observer.waited(loop.time() - since, True)
        return Ticket(cost, x, self.observations)

    def _schedule(self) -> None:
        """Admit the waiters at the head of the queue that fit; wake up when the next will."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._heap:
            _, _, waiter = self._heap[0]
            if waiter.future.done():
                heapq.heappop(self._heap)
                continue
            if not (self.enabled and self.budget.active):
                wait = 0.0
            else:
                wait = self.budget.wait_s(waiter.cost)
            if wait > 0:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(min(wait, 1.0) + 0.001, self._schedule)
                return
            heapq.heappop(self._heap)
            self.budget.admit(waiter.cost, waited=True, real=not waiter.shadow)
            waiter.future.set_result(None)

    def observe(self, limits: Limits) -> None:
        """Rate-limit headers of one response (an answer or an error)."""
        if not self.enabled:
            return
        self.observations += 1
        self.budget.observe(limits)
        if self._heap:
            self._schedule()

    def settle(
        self,
        ticket: Ticket,
        *,
        input_tokens: int,
        cache_write_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
    ) -> None:
        """The call was answered (and billed) with this usage. When no response has brought
        headers since it was admitted, that counts towards the fall-back to pass-through."""
        counted = input_tokens + cache_write_tokens
        if self.count_cache_reads:
            counted += cache_read_tokens
        actual = Cost(1.0, float(counted), float(output_tokens))
        self._observer.used(actual)
        cost = ticket.cost
        if cost is not None:
            self._observer.estimated(cost, actual)
            self.output_estimate += 0.1 * (output_tokens - self.output_estimate)
            self.estimate.observe(
                ticket.x, float(input_tokens), float(cache_write_tokens), float(cache_read_tokens)
            )
            self.budget.settle(cost, actual)
            if self.observations == ticket.seen:
                self.budget.no_headers()
        if self._heap:
            self._schedule()

    def failed(self, ticket: Ticket, *, rate_limited: bool = False) -> None:
        """The call got no answer (an error, a 429, a cancellation)."""
        if ticket.cost is not None:
            self.budget.settle(ticket.cost, None)
        if rate_limited:
            self._observer.rate_limited()
            if self.enabled:
                self.budget.on_rate_limited()
        if self._heap:
            self._schedule()

    def shadow_keep(self) -> float:
        """Probability with which a shadow call should be made now (1 without pressure)."""
        if not self.enabled:
            return 1.0
        return self.budget.keep_probability()


def disabled(max_tokens: int = 128) -> Admission:
    """A gate that admits everything and counts nothing (tests, fakes)."""
    return Admission(Budget(), TokenEstimate(1.0), max_tokens=max_tokens, enabled=False)
