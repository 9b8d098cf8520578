"""The Anthropic adapter: a ``ModelClient`` (``caller.py``) on the ``anthropic`` SDK.

It builds the request from the model's profile (``profiles.py``: thinking, effort,
``max_tokens``), with the cached system prefix, the delimited user text, and structured output
constrained to the label enum. It calls the SDK with the SDK's own retries off
(``max_retries=0``: every retry is the caller's, and counted), reads the rate-limit headers of
every response, translates SDK errors once into our tree (``translate_error``, which the
Batches API boundary and the start-up model check use too), and validates the answer against
the label set (case-insensitively). A refusal is an answer, not an error.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any

import anthropic

from escalator.config import ModelSettings, default_of
from escalator.contract.messages import Attempt
from escalator.errors import ApiBlocked, ModelRejected, ModelUnavailable
from escalator.model.answers import attempt_of
from escalator.model.prices import PriceTable
from escalator.model.profiles import ModelProfile
from escalator.model.task import Task
from escalator.observability import tracing

#: Every documented ``anthropic-ratelimit-*`` family (Rate limits: "Response headers").
RATE_LIMIT_KINDS = ("requests", "input-tokens", "output-tokens", "tokens")
#: 429 ``error.details.error_code`` values that mean a monthly spend cap, not a rate.
SPEND_CAP_CODES = frozenset(
    {
        "enforced_spend_limit_reached",
        "contract_spend_limit_reached",
        "linked_organization_spend_limit_reached",
    }
)
RateLimits = dict[str, tuple[float, float]]


def retry_after_s(
    headers: Mapping[str, str] | None, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``retry-after`` as seconds or as an HTTP
    date (RFC 9110 allows both; a date in the past means now). None: absent or unreadable."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return max(0.0, float(raw) * scale)
        except ValueError:
            pass
        if name == "retry-after":
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:  # RFC 9110: an HTTP date is always GMT
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - now())
    return None


def rate_limits(headers: Mapping[str, str]) -> RateLimits:
    """``{kind: (limit, remaining)}`` from the ``anthropic-ratelimit-*`` headers present."""
    out: RateLimits = {}
    for kind in RATE_LIMIT_KINDS:
        limit = headers.get(f"anthropic-ratelimit-{kind}-limit")
        remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
        if limit is None or remaining is None:
            continue
        try:
            out[kind.replace("-", "_")] = (float(limit), float(remaining))
        except ValueError:
            continue
    return out


def translate_error(exc: anthropic.AnthropicError) -> ModelUnavailable | ModelRejected:
    """Map an SDK error to transient, account-level or per-request. The API key never appears
    in messages; the request id always travels along."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ModelUnavailable("model call timed out", kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelUnavailable("cannot connect to the model API", kind="connection")
    if not isinstance(exc, anthropic.APIStatusError):
        return ModelUnavailable(f"unexpected SDK error {type(exc).__name__}", kind="other")
    status = exc.status_code
    rid = exc.request_id
    code = exc.error_code
    said = (exc.api_message or "")[:300]
    headers = exc.response.headers
    where = f" (request-id {rid})" if rid else ""
    if status == 401:
        return ApiBlocked(
            f"the API rejected the key (401){where}", kind="credentials", request_id=rid
        )
    if status == 403:
        return ApiBlocked(
            f"the key may not use this model (403): {said}{where}",
            kind="permission",
            request_id=rid,
        )
    if status == 402:
        return ApiBlocked(f"billing problem (402): {said}{where}", kind="billing", request_id=rid)
    if status == 404:
        return ApiBlocked(
            f"unknown or retired model (404): {said}{where}", kind="model_not_found", request_id=rid
        )
    if status == 429:
        if code in SPEND_CAP_CODES:
            return ApiBlocked(
                f"spend cap reached (429 {code}): {said}{where}", kind="spend_limit", request_id=rid
            )
        return ModelUnavailable(
            f"rate limited (429{' ' + code if code else ''}){where}",
            kind="rate_limit",
            retry_after_s=retry_after_s(headers),
            request_id=rid,
        )
    if status == 529:
        return ModelUnavailable(
            f"API overloaded (529){where}",
            kind="overloaded",
            retry_after_s=retry_after_s(headers),
            request_id=rid,
        )
    if status >= 500 or status in (408, 409):
        return ModelUnavailable(f"API error {status}{where}", kind="server_error", request_id=rid)
    if status == 400 and code == "organization_on_hold":
        return ApiBlocked(
            f"organization on hold (400): {said}{where}",
            kind="organization_on_hold",
            request_id=rid,
        )
    if status == 400 and "usage limit" in said.lower():
        # The Errors page: "The API also returns a 400 when usage reaches an organization or
        # workspace spend limit you set" ("You have reached your specified ... usage limits").
        return ApiBlocked(
            f"spend limit reached (400): {said}{where}", kind="spend_limit", request_id=rid
        )
    return ModelRejected(
        f"API rejected the request ({status}): {said}{where}",
        reason=f"api_{status}",
        request_id=rid,
    )


#: Every call opts in to fallback credit, so that a refusal carries a token the strong tier
#: can echo (Fallback credit: "Send the request that may be refused with the anthropic-beta:
#: fallback-credit-2026-07-01 header"; the SDK's first-party ``messages`` surface mints none).
FALLBACK_CREDIT_BETA = "fallback-credit-2026-07-01"


class AnthropicClassifier:
    """ModelClient over ``anthropic.AsyncAnthropic`` (the real API or the emulator), through the
    SDK's beta surface with the fallback-credit beta (the only one sent)."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        tier: str,
        model: str,
        task: Task,
        prices: PriceTable,
        profile: ModelProfile,
        cache_ttl: str = default_of(ModelSettings, "cache_ttl"),
        on_rate_limits: Callable[[str, RateLimits], None] = lambda model, limits: None,
    ) -> None:
        self._client = client
        self.tier = tier
        self.model = model
        self.profile = profile
        self._task = task
        self._prices = prices
        self._on_rate_limits = on_rate_limits
        self._system = task.system_blocks(ttl=cache_ttl)
        output_config: dict[str, Any] = {
            "format": {"type": "json_schema", "schema": task.output_schema()}
        }
        if profile.effort is not None:
            output_config["effort"] = profile.effort
        self._fields: dict[str, Any] = {**profile.request_fields(), "output_config": output_config}

    def request(self, text: str) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for ``text`` (what is sent)."""
        return {
            "model": self.model,
            "system": self._system,
            "messages": [{"role": "user", "content": self._task.user_turn(text)}],
            **self._fields,
        }

    def attempt(self, message: Any) -> Attempt:
        """The Attempt of a message answered elsewhere (a batch result), read as
        :meth:`classify` reads its own."""
        return attempt_of(
            message, tier=self.tier, model=self.model, task=self._task, prices=self._prices
        )

    async def classify(self, text: str, *, credit_token: str | None = None) -> Attempt:
        started = time.perf_counter()
        request = self.request(text)
        if credit_token is not None:
            # best_effort: a token that cannot be redeemed (expired, another body...) costs
            # the normal price instead of failing the call; usage.fallback_credit says which.
            request["fallback_credit_token"] = {"token": credit_token, "mode": "best_effort"}
        try:
            raw = await self._client.beta.messages.with_raw_response.create(
                **request, betas=[FALLBACK_CREDIT_BETA]
            )
            message = await raw.parse()
            tracing.response(message.id, message.model)
        except anthropic.APIStatusError as exc:
            self._report_limits(exc.response.headers)
            raise translate_error(exc) from exc
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        self._report_limits(raw.headers)
        return attempt_of(
            message,
            tier=self.tier,
            model=self.model,
            task=self._task,
            prices=self._prices,
            latency_ms=latency_ms,
            request_id=raw.request_id,
            credit_token=credit_token,
        )

    def _report_limits(self, headers: Mapping[str, str]) -> None:
        limits = rate_limits(headers)
        if limits:
            self._on_rate_limits(self.model, limits)
