"""The emulated organisation's rate limits: one set of buckets per rate-limit group, and the
workspace's own limits beside them.

Rate limits (Claude API, and Claude Platform on AWS: "Limits are pooled by model family"; the
Admin API's ``model_group``, "for example, Claude Sonnet 4.x"): every model of a group draws
from the same buckets (:attr:`ModelSpec.group`). A workspace may have limits of its own, which
"apply alongside the organization's limit, not in place of it" (Admin API,
``WorkspaceRateLimitType``). The organisation's input limit is cache-aware
(``input_tokens_per_minute_cache_aware``: "does not count cache reads, and on current models
the organization's input-token limit usually has this type"); the workspace's here is
``input_tokens_per_minute``, which "counts every input token, cache reads included".

A call is charged when it is admitted, before any latency: its requests and input at once, and
its output at ``max_tokens``, a reservation held until the response ends, when the difference
to the real output is given back (Rate limits: "OTPM is estimated based on max_tokens at the
beginning of each request, and the estimate is adjusted at the end of the request"). The
headers of a response are read after that correction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from escalator_dev.emulator.rules import RateLimiter

KINDS = ("requests", "input-tokens", "output-tokens")


@dataclass(slots=True)
class Charge:
    """What one admitted call holds: its limiters and its output reservation."""

    limiters: tuple[RateLimiter, ...]
    max_tokens: int
    settled: bool = False

    def settle(self, output_tokens: int) -> None:
        """The response ended: give back the output reserved and not used (once)."""
        if self.settled:
            return
        self.settled = True
        for limiter in self.limiters:
            limiter.settle(self.max_tokens, output_tokens)


@dataclass(slots=True)
class Exceeded:
    """Which limit a call would exceed, whose it is, and when to retry."""

    kind: str
    owner: str
    retry_after_s: int


@dataclass(slots=True)
class Limits:
    """The organisation's limiter for one group, and the workspace's (None: no limit set)."""

    org: RateLimiter
    workspace: RateLimiter | None = None
    clock: Callable[[], float] = field(default=time.monotonic)

    def admit(self, uncached: int, cache_read: int, max_tokens: int) -> Charge | Exceeded:
        """Charge the call on every limiter, or say which it would exceed (charging none).
        ``uncached`` is uncached input plus cache writes; reads count on the workspace only."""
        needs: list[tuple[RateLimiter, str, int]] = [(self.org, "organization", uncached)]
        if self.workspace is not None:
            needs.append((self.workspace, "workspace", uncached + cache_read))
        for limiter, owner, tokens in needs:
            kind = limiter.exceeded(tokens, max_tokens)
            if kind is not None:
                return Exceeded(kind, owner, limiter.retry_after_s(kind, tokens, max_tokens))
        for limiter, _, tokens in needs:
            limiter.charge(tokens, max_tokens)
        return Charge(tuple(limiter for limiter, _, _ in needs), max_tokens)

    def headers(self) -> dict[str, str]:
        """``anthropic-ratelimit-*``: per kind, the limit with the least left (the workspace's
        when it binds); tokens-* repeats the more restrictive token limit (Rate limits: "the
        most restrictive limit currently in effect"). Token counts rounded to the thousand,
        reset in RFC 3339."""
        limiters = [self.org] + ([self.workspace] if self.workspace is not None else [])
        now = self.clock()
        wall = time.time()
        out: dict[str, str] = {}
        tightest: tuple[float, str] | None = None
        for kind in KINDS:
            bucket = min((lim.buckets[kind] for lim in limiters), key=lambda b: b.level_at(now))
            remaining = max(0.0, bucket.level)
            if kind != "requests":
                share = bucket.level / bucket.limit
                if tightest is None or share < tightest[0]:
                    tightest = (share, kind)
                remaining = round(remaining / 1000) * 1000
            reset = datetime.fromtimestamp(wall + bucket.full_at(now) - now, UTC)
            out[f"anthropic-ratelimit-{kind}-limit"] = str(int(bucket.limit))
            out[f"anthropic-ratelimit-{kind}-remaining"] = str(int(remaining))
            out[f"anthropic-ratelimit-{kind}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        if tightest is not None:
            for part in ("limit", "remaining", "reset"):
                out[f"anthropic-ratelimit-tokens-{part}"] = out[
                    f"anthropic-ratelimit-{tightest[1]}-{part}"
                ]
        return out
