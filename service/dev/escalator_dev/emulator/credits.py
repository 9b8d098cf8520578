"""Fallback credit tokens and cache diagnostics: what the emulator remembers between requests.

Fallback credit (its page, and the pinned SDK's ``BetaRefusalStopDetails`` and
``BetaFallbackCreditUsage``): with a fallback-credit beta header, a refusal carries
``stop_details.fallback_credit_token`` (null "when the refused model isn't eligible") and
``fallback_has_prefill_claim`` (false "when the request uses output_format"; the emulator
never offers the appended-assistant form). Echoed on a retry "with the same request body ...
on an eligible fallback model, on the same platform, and within 5 minutes of the refusal",
it has "the retry's cache-creation tokens for the prefix that was warm on the refused model
billed at the cache-read rate": the emulator reports those tokens as cache reads. A failing
redemption is a 400 in ``strict`` mode; in ``best_effort`` the retry is served at normal price
and ``usage.fallback_credit`` says ``not_applied`` and why. "Two failures stay hard in both
modes: a malformed token, and combining fallback_credit_token with fallbacks."

Which fields make "the same request body" is the emulator's reading: the prompt-shaping ones
(``system``, ``messages``, ``tools``, ``tool_choice``, ``output_config.format``). ``model``,
``max_tokens``, ``thinking`` and effort may differ, as the SDK's own fallback middleware
changes them between hops ("A between_tools thinking config is sent to a hop as disabled").

Cache diagnostics (``diagnostics.previous_message_id``, ``BetaCacheMissReason``): the emulator
keeps each answer's prompt fingerprint and says why a request could not reuse the previous
one's prefix: ``model_changed`` (model or speed), ``system_changed``, ``tools_changed``,
``messages_changed`` (an earlier entry differs, rather than entries appended),
``previous_message_not_found``, or ``unavailable`` (model, system and tools match but another
prompt-affecting parameter such as thinking differs); null when nothing diverged.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

TOKEN_TTL_S = 300.0


def digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def body_key(body: dict[str, Any]) -> str:
    """The fingerprint of the prompt-shaping fields of a request body."""
    fmt = (body.get("output_config") or {}).get("format")
    return digest([body.get(k) for k in ("system", "messages", "tools", "tool_choice")] + [fmt])


@dataclass(frozen=True, slots=True)
class Credit:
    model: str
    key_hash: str
    body: str
    minted_at: float
    #: Prefix tokens warm (written or read) on the refused model.
    warm_tokens: int


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One answered request, for cache diagnostics."""

    model: str
    speed: str
    system: str
    tools: str
    messages: tuple[str, ...]
    other: str
    cached_tokens: int


class Redemption:
    """The outcome of presenting a token: ``redeemed`` (with the tokens credited) or
    ``not_applied`` with its reason."""

    def __init__(self, reason: str | None, credited: int = 0) -> None:
        self.reason = reason
        self.credited = credited

    def usage(self) -> dict[str, Any]:
        if self.reason is None:
            return {"status": {"type": "redeemed"}}
        return {"status": {"type": "not_applied", "reason": self.reason}}


@dataclass(slots=True)
class Memory:
    credits: dict[str, Credit] = field(default_factory=dict)
    answers: dict[str, Fingerprint] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    token_ttl_s: float = TOKEN_TTL_S

    def mint(self, model: str, api_key: str, body: dict[str, Any], warm_tokens: int) -> str:
        token = "fct_sim_" + secrets.token_urlsafe(18)
        self.credits[token] = Credit(
            model, _hash(api_key), body_key(body), self.clock(), warm_tokens
        )
        return token

    def known(self, token: str) -> bool:
        return token in self.credits

    def redeem(
        self,
        token: str,
        *,
        model: str,
        eligible: bool,
        api_key: str,
        body: dict[str, Any],
        betas: bool,
    ) -> Redemption:
        """Check a known token against this retry (:meth:`consume` uses it up once the retry
        is admitted)."""
        credit = self.credits[token]
        if not betas:
            return Redemption("not_enabled")
        if self.clock() - credit.minted_at > self.token_ttl_s:
            return Redemption("expired")
        if _hash(api_key) != credit.key_hash:
            return Redemption("wrong_workspace")
        if model == credit.model or not eligible:
            return Redemption("invalid_target_model")
        if body_key(body) != credit.body:
            return Redemption("body_mismatch")
        return Redemption(None, credit.warm_tokens)

    def consume(self, token: str) -> None:
        self.credits.pop(token, None)

    def remember(self, message_id: str, fingerprint: Fingerprint) -> None:
        self.answers[message_id] = fingerprint
        if len(self.answers) > 100_000:  # bounded: drop the oldest
            self.answers.pop(next(iter(self.answers)))

    def cache_miss_reason(
        self, previous: str | None, now: Fingerprint, read: int
    ) -> dict[str, Any] | None:
        """``diagnostics.cache_miss_reason`` against the previous request, or None: nothing
        diverged, or this request read at least the prefix the previous one cached."""
        if previous is None:
            return None
        before = self.answers.get(previous)
        if before is None:
            return {"type": "previous_message_not_found"}
        if before.cached_tokens and read >= before.cached_tokens:
            return None
        missed = before.cached_tokens
        if (before.model, before.speed) != (now.model, now.speed):
            return {"type": "model_changed", "cache_missed_input_tokens": missed}
        if before.system != now.system:
            return {"type": "system_changed", "cache_missed_input_tokens": missed}
        if before.tools != now.tools:
            return {"type": "tools_changed", "cache_missed_input_tokens": missed}
        if now.messages[: len(before.messages)] != before.messages:
            return {"type": "messages_changed", "cache_missed_input_tokens": missed}
        if before.other != now.other:
            return {"type": "unavailable"}
        return None


def fingerprint(model: str, speed: str, body: dict[str, Any], cached_tokens: int) -> Fingerprint:
    return Fingerprint(
        model=model,
        speed=speed,
        system=digest(body.get("system")),
        tools=digest(body.get("tools")),
        messages=tuple(digest(m) for m in body.get("messages") or []),
        other=digest([body.get("thinking"), body.get("tool_choice"), body.get("output_config")]),
        cached_tokens=cached_tokens,
    )


def _hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]
