"""The model boundary: the ModelClient protocol and its Anthropic adapter.

The adapter builds the request (cached system prefix, delimited user text, structured output
constrained to the label enum), calls the SDK with its own retries off (``max_retries=0``:
one retry layer, ours), translates SDK errors once into our tree, and validates the answer
against the label set. :class:`ModelCaller` adds the retry layer (tenacity: exponential backoff
with jitter and a cap, honouring ``retry-after``) and the circuit breaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anthropic
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from escalator.breaker import CircuitBreaker
from escalator.errors import ModelRejected, ModelUnavailable
from escalator.limits import AdaptiveLimit
from escalator.messages import Attempt
from escalator.prices import PriceTable, Usage
from escalator.task import Task


class ModelClient(Protocol):
    """Answers one text. Raises ModelUnavailable (transient) or ModelRejected (permanent)."""

    tier: str
    model: str

    async def classify(self, text: str) -> Attempt: ...


def _retry_after_s(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is not None:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    return None


def translate_error(exc: anthropic.AnthropicError) -> ModelUnavailable | ModelRejected:
    """Map an SDK error to retryable or permanent. The API key never appears in messages."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ModelUnavailable("model call timed out", kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelUnavailable("cannot connect to the model API", kind="connection")
    if isinstance(exc, anthropic.RateLimitError):
        return ModelUnavailable(
            "rate limited (429)", kind="rate_limit", retry_after_s=_retry_after_s(exc.response)
        )
    if isinstance(exc, anthropic.OverloadedError):
        return ModelUnavailable(
            "API overloaded (529)", kind="overloaded", retry_after_s=_retry_after_s(exc.response)
        )
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status >= 500 or status in (408, 409):
            return ModelUnavailable(f"API error {status}", kind="server_error")
        if status in (401, 403):
            # A bad key fails every call: treat as an outage (breaker), never dead-letter for it.
            return ModelUnavailable(f"API refused credentials ({status})", kind="auth")
        return ModelRejected(f"API rejected the request ({status})", reason=f"api_{status}")
    return ModelUnavailable(f"unexpected SDK error {type(exc).__name__}", kind="other")


class AnthropicClassifier:
    """ModelClient over ``anthropic.AsyncAnthropic`` (the real API or the simulator)."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        tier: str,
        model: str,
        task: Task,
        prices: PriceTable,
        max_tokens: int = 64,
    ) -> None:
        self._client = client
        self.tier = tier
        self.model = model
        self._task = task
        self._prices = prices
        self._max_tokens = max_tokens
        self._system = task.system_blocks()
        self._output_config: Any = {
            "format": {"type": "json_schema", "schema": task.output_schema()}
        }
        self._labels = frozenset(task.labels)

    async def classify(self, text: str) -> Attempt:
        started = time.perf_counter()
        try:
            message = await self._client.messages.create(
                model=self.model,
                max_tokens=self._max_tokens,
                system=self._system,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": self._task.user_turn(text)}],
                output_config=self._output_config,
            )
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        u = message.usage
        usage = Usage(
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_write_tokens=u.cache_creation_input_tokens or 0,
            cache_read_tokens=u.cache_read_input_tokens or 0,
        )
        raw = "".join(b.text for b in message.content if b.type == "text")
        label, confidence, error = self._validate(raw, message.stop_reason)
        return Attempt(
            tier=self.tier,
            model=self.model,
            label=label,
            confidence=confidence,
            valid=error is None,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cost_usd=self._prices.cost_usd(self.model, usage),
            latency_ms=latency_ms,
            error=error,
        )

    def _validate(self, raw: str, stop_reason: str | None) -> tuple[str | None, float, str | None]:
        """(label, confidence, error). An invalid answer has confidence 0 and an error code."""
        if stop_reason not in ("end_turn", "stop_sequence"):
            return None, 0.0, f"stop_reason_{stop_reason}"
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, 0.0, "answer_not_json"
        if not isinstance(data, dict):
            return None, 0.0, "answer_not_object"
        label = data.get("label")
        confidence = data.get("confidence")
        if not isinstance(label, str) or label not in self._labels:
            return None, 0.0, "label_not_in_set"
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, int | float)
            or not 0.0 <= float(confidence) <= 1.0
        ):
            return label, 0.0, "confidence_invalid"
        return label, float(confidence), None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    initial_s: float = 0.5
    max_s: float = 20.0


class ModelCaller:
    """One retry layer around a ModelClient, gated by a circuit breaker.

    Rate-limit answers (429) also shrink the shared :class:`AdaptiveLimit` (AIMD), which the
    tier's worker reads as its in-flight limit; successful answers grow it back.
    """

    def __init__(
        self,
        client: ModelClient,
        breaker: CircuitBreaker,
        policy: RetryPolicy,
        on_retry: Callable[[ModelUnavailable], None] = lambda exc: None,
        limit: AdaptiveLimit | None = None,
    ) -> None:
        self.client = client
        self.limit = limit or AdaptiveLimit(1, enabled=False)
        self.breaker = breaker
        self.policy = policy
        self._on_retry = on_retry
        self._backoff = wait_exponential_jitter(
            multiplier=policy.initial_s, max=policy.max_s, jitter=policy.initial_s
        )

    def _wait(self, state: RetryCallState) -> float:
        base: float = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after_s if isinstance(exc, ModelUnavailable) else None
        return max(base, retry_after or 0.0)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ModelUnavailable):
            self._on_retry(exc)

    async def _once(self, text: str) -> Attempt:
        if self.breaker.state != "closed":
            await self.breaker.wait_closed()
        try:
            answer = await self.client.classify(text)
        except ModelUnavailable as exc:
            self.breaker.record(False)
            if exc.kind == "rate_limit":
                self.limit.on_rate_limited()
            raise
        self.breaker.record(True)
        self.limit.on_success()
        return answer

    async def call(self, text: str) -> Attempt:
        """Answer ``text``; raise ModelUnavailable once attempts are exhausted."""
        try:
            # Fast path: most calls succeed first time, and building tenacity's retry state
            # per call costs more than the rest of the pipeline's per-record work.
            return await self._once(text)
        except ModelUnavailable as exc:
            if self.policy.max_attempts <= 1:
                raise
            self._on_retry(exc)
            first_wait = max(self.policy.initial_s, exc.retry_after_s or 0.0)
        await asyncio.sleep(first_wait)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.max_attempts - 1),
            wait=self._wait,
            retry=retry_if_exception_type(ModelUnavailable),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(text)
        raise AssertionError("unreachable: tenacity reraises the last error")
