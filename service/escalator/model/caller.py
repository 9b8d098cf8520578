"""The model boundary: the ModelClient protocol (its Anthropic adapter is ``adapter.py``),
and the retry and failure policy around it.

:class:`ModelCaller` retries at two levels, both here. :meth:`ModelCaller.call` retries a
transient failure a few times (tenacity: exponential backoff with jitter and a cap, honouring
``retry-after``); :meth:`ModelCaller.answer` then holds the record through what outlasts those
retries (the hold rule, with its own doubling wait between rounds): outages and account-level
failures hold it, and only a record that fails while others succeed is given up on. Around
both: the circuit breaker and the cache warm-up gate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from escalator.config import Settings
from escalator.contract.messages import Attempt
from escalator.errors import ApiBlocked, ModelRejected, ModelUnavailable, PermanentError
from escalator.model.adapter import RateLimits
from escalator.model.admission import Admission, disabled
from escalator.model.breaker import CircuitBreaker
from escalator.model.limits import AdaptiveLimit
from escalator.observability.logs import log

logger = logging.getLogger("escalator.model")

#: Transient failures that one request can cause on its own (a 500, a timeout on a huge
#: text); rate limits, overload and connection trouble never count against a record.
RECORD_FAILURES = frozenset({"server_error", "timeout", "other"})


class ModelClient(Protocol):
    """Answers one text. Raises ModelUnavailable (transient; ApiBlocked for the account) or
    ModelRejected (this request)."""

    tier: str
    model: str

    async def classify(self, text: str, *, credit_token: str | None = None) -> Attempt:
        """``credit_token``: a refusal's fallback credit token to echo (Fallback credit)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """The one retry and failure policy of both tiers' model calls (:class:`ModelCaller`).

    No defaults here: they live in :mod:`escalator.config` (build it with
    :meth:`from_settings`).
    """

    #: Calls per :meth:`ModelCaller.call` for transient failures (tenacity's stop).
    max_attempts: int
    #: Exponential backoff with jitter between those calls: first wait, and the cap.
    initial_s: float
    max_s: float
    #: A record whose calls keep failing transiently while others succeed is given up on
    #: after this many calls (it must not block its partition forever).
    poison_max_attempts: int
    #: Answers that fail validation, when the caller asks again (the strong tier), before
    #: the record is given up on as ``model_output_invalid``.
    invalid_answer_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """``ESCALATOR_MODEL_MAX_ATTEMPTS``, ``ESCALATOR_BACKOFF_INITIAL_S``,
        ``ESCALATOR_BACKOFF_MAX_S``, ``ESCALATOR_POISON_MAX_ATTEMPTS`` and
        ``ESCALATOR_INVALID_ANSWER_ATTEMPTS``."""
        return cls(
            max_attempts=settings.model.max_attempts,
            initial_s=settings.model.backoff_initial_s,
            max_s=settings.model.backoff_max_s,
            poison_max_attempts=settings.pipeline.poison_max_attempts,
            invalid_answer_attempts=settings.pipeline.invalid_answer_attempts,
        )


class ModelCaller:
    """The retries and the hold rule around a ModelClient, gated by a circuit breaker and a
    cache warm-up.

    Before each call, the model's :class:`~escalator.model.admission.Admission` gate waits until the
    organisation's rate limit (as the headers show it) and this process's share of it cover
    the call. Rate-limit answers (429) it did not prevent also shrink the shared
    :class:`AdaptiveLimit` (AIMD), which the tier's worker reads as its in-flight limit;
    successful answers grow it back. Without headers the gate lets every call through and
    AIMD alone acts, as before admission control.

    Warm-up: a prompt-cache entry is readable only once the response that wrote it has begun,
    so after start-up, and after an idle gap near the cache TTL, one call goes alone and the
    others wait for its answer instead of each paying a cache write.
    """

    def __init__(
        self,
        client: ModelClient,
        breaker: CircuitBreaker,
        policy: RetryPolicy,
        on_retry: Callable[[ModelUnavailable], None] = lambda exc: None,
        limit: AdaptiveLimit | None = None,
        *,
        warm_ttl_s: float | None = None,
        on_warmup: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        admission: Admission | None = None,
        on_rate_limits: Callable[[str, RateLimits], None] = lambda model, limits: None,
    ) -> None:
        self.client = client
        self._on_rate_limits = on_rate_limits
        self.limit = limit or AdaptiveLimit(1, enabled=False)
        #: Admission control from the rate-limit headers (``admission.py``), after the breaker
        #: and the warm-up gate: the warm-up call goes first.
        self.admission = admission or disabled()
        self.breaker = breaker
        self.policy = policy
        self._on_retry = on_retry
        self._backoff = wait_exponential_jitter(
            multiplier=policy.initial_s, max=policy.max_s, jitter=policy.initial_s
        )
        self._warm_ttl_s = warm_ttl_s
        self._on_warmup = on_warmup
        self._clock = clock
        self._last_answer = -float("inf")
        self._warming: asyncio.Event | None = None

    @property
    def model(self) -> str:
        return self.client.model

    def rate_limits_seen(self, model: str, limits: RateLimits) -> None:
        """A response's rate-limit headers, from the adapter: to ``on_rate_limits`` (the
        metrics), then to the admission gate this caller already holds."""
        self._on_rate_limits(model, limits)
        self.admission.observe(limits)

    def hold(self) -> tuple[str | None, str | None]:
        """Why the account holds this tier's traffic (None if it does not), and a message
        for people: what /readyz reports."""
        reason = self.breaker.hold_reason
        if reason is None:
            return None, None
        b = self.breaker
        return reason, b.blocked_message or f"every call rejected ({b.open_reason})"

    @property
    def paused(self) -> bool:
        """True while the tier must take no new work (breaker open or account blocked)."""
        return self.breaker.is_open

    def _wait(self, state: RetryCallState) -> float:
        base: float = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after_s if isinstance(exc, ModelUnavailable) else None
        return max(base, retry_after or 0.0)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ModelUnavailable):
            self._on_retry(exc)

    async def _warm_gate(self) -> bool:
        """Wait while another call warms the cache; True when this call is the warm-up."""
        if self._warm_ttl_s is None:
            return False
        while self._clock() - self._last_answer > self._warm_ttl_s:
            if self._warming is None:
                self._warming = asyncio.Event()
                self._on_warmup()
                return True
            await self._warming.wait()
        return False

    def _warm_done(self) -> None:
        if self._warming is not None:
            self._warming.set()
            self._warming = None

    async def _admit(self) -> tuple[bool, bool]:
        """Wait for the breaker and the warm-up; (is the probe, is the warm-up call).

        Only the probe may call while the breaker is not closed: a call that waited for a
        warm-up that failed (the account got blocked, say) goes back to the breaker, and so
        does one that became the next warm-up call while the breaker is open.
        """
        while True:
            probe = await self.breaker.acquire()
            try:
                warmer = await self._warm_gate()
            except BaseException:
                if probe:
                    self.breaker.abandon_probe()
                raise
            if probe or self.breaker.state == "closed":
                return probe, warmer
            if warmer:
                self._warm_done()

    def shadow_keep(self) -> float:
        """Probability of making a shadow call now (below 1 while the budget is tight)."""
        return self.admission.shadow_keep()

    async def _once(
        self, text: str, shadow: bool = False, credit_token: str | None = None
    ) -> Attempt:
        probe, warmer = await self._admit()
        try:
            ticket = await self.admission.acquire(text, shadow=shadow, warm=warmer)
        except BaseException:
            if probe:
                self.breaker.abandon_probe()
            if warmer:
                self._warm_done()
            raise
        try:
            if credit_token is None:
                answer = await self.client.classify(text)
            else:
                answer = await self.client.classify(text, credit_token=credit_token)
        except ApiBlocked as exc:
            self.admission.failed(ticket)
            self.breaker.block(exc.kind, str(exc), probe=probe)
            self._failed(exc, exc.kind)
            raise
        except ModelUnavailable as exc:
            self.admission.failed(ticket, rate_limited=exc.kind == "rate_limit")
            self.breaker.record(False, exc.kind, probe=probe)
            if exc.kind == "rate_limit":
                self.limit.on_rate_limited()
            self._failed(exc, exc.kind)
            raise
        except ModelRejected as exc:
            self.admission.failed(ticket)
            self.breaker.record(False, exc.reason, probe=probe)
            self._failed(exc, exc.reason)
            raise
        except BaseException:
            self.admission.failed(ticket)
            if probe:
                self.breaker.abandon_probe()
            raise
        finally:
            if warmer:
                self._warm_done()
        self.admission.settle(
            ticket,
            input_tokens=answer.input_tokens,
            cache_write_tokens=answer.cache_write_tokens,
            output_tokens=answer.output_tokens,
            cache_read_tokens=answer.cache_read_tokens,
        )
        self._last_answer = self._clock()
        self.breaker.record(True, probe=probe)
        self.limit.on_success()
        return answer

    def _failed(self, exc: ModelUnavailable | ModelRejected, kind: str) -> None:
        log(
            logger,
            "model_call_failed",
            tier=self.client.tier,
            model=self.client.model,
            kind=kind,
            request_id=exc.request_id,
            error=str(exc)[:300],
        )

    async def call(
        self, text: str, *, shadow: bool = False, credit_token: str | None = None
    ) -> Attempt:
        """Answer ``text``; raise ModelUnavailable once attempts are exhausted, ApiBlocked and
        ModelRejected at once. ``shadow`` calls yield to real ones at the admission gate."""
        try:
            # Fast path: most calls succeed first time, and building tenacity's retry state
            # per call costs more than the rest of the pipeline's per-record work.
            return await self._once(text, shadow, credit_token)
        except ApiBlocked:
            raise
        except ModelUnavailable as exc:
            if self.policy.max_attempts <= 1:
                raise
            self._on_retry(exc)
            first_wait = max(self.policy.initial_s, exc.retry_after_s or 0.0)
        await asyncio.sleep(first_wait)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.max_attempts - 1),
            wait=self._wait,
            retry=retry_if_exception_type(ModelUnavailable)
            & retry_if_not_exception_type(ApiBlocked),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(text, shadow, credit_token)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def answer(
        self,
        text: str,
        *,
        give_up_when_unavailable: bool = False,
        shadow: bool = False,
        on_invalid: Callable[[Attempt], None] | None = None,
        credit_token: str | None = None,
    ) -> Attempt:
        """Answer ``text``, holding the record through outages and account-level failures.

        Raises only for this record: :class:`ModelRejected` when the API rejects it twice
        while answering other requests in between (when it rejects everything, that is a
        configuration or account problem and the breaker holds the traffic), and
        :class:`PermanentError` ``model_unavailable`` when its calls keep failing transiently
        while others succeed (``poison_max_attempts``). With ``give_up_when_unavailable``,
        a transient failure that exhausted its retries is raised instead of held (never an
        account-level one).

        An answer that fails validation is returned as it is (the cheap tier routes it as
        confidence 0), unless ``on_invalid`` is given: then each one is handed to it and the
        text is asked again, and after ``invalid_answer_attempts`` of them
        :class:`PermanentError` ``model_output_invalid`` is raised. A refusal is an answer,
        returned at once, never asked again (each one is billed).

        ``credit_token`` (a refusal's fallback credit token) goes with the calls until one is
        answered: an answer has used it up, redeemed or not.
        """
        invalid = 0
        while True:
            attempt = await self._held(text, give_up_when_unavailable, shadow, credit_token)
            credit_token = None
            if on_invalid is None or attempt.valid or attempt.refused:
                return attempt
            on_invalid(attempt)
            invalid += 1
            if invalid >= self.policy.invalid_answer_attempts:
                raise PermanentError(
                    f"{self.client.tier} model answer failed validation {invalid} times "
                    f"(last: {attempt.error})",
                    reason="model_output_invalid",
                )

    async def _held(
        self,
        text: str,
        give_up_when_unavailable: bool,
        shadow: bool,
        credit_token: str | None = None,
    ) -> Attempt:
        """One answer, valid or not, through outages and blocks (see :meth:`answer`)."""
        failed = 0
        rejected_at: int | None = None
        failed_at = self.breaker.successes
        backoff_s = self.policy.initial_s
        while True:
            try:
                return await self.call(text, shadow=shadow, credit_token=credit_token)
            except ApiBlocked:
                continue  # the breaker is blocked: the next call waits for its probe
            except ModelRejected:
                successes = self.breaker.successes
                if rejected_at is not None and successes > rejected_at:
                    if self.breaker.state == "closed":
                        raise
                rejected_at = successes if rejected_at is None else rejected_at
            except ModelUnavailable as exc:
                if give_up_when_unavailable:
                    raise
                if self.breaker.state != "closed":
                    continue  # an outage: hold; the next call waits for the breaker
                # A round counts against this record only if others were answered meanwhile
                # (else it is an outage the breaker has not seen yet) and the failure could be
                # the record's own (a 429 or 529 is about the account or the API, never it).
                successes = self.breaker.successes
                if exc.kind in RECORD_FAILURES and successes > failed_at:
                    failed += self.policy.max_attempts
                failed_at = successes
                if failed >= self.policy.poison_max_attempts:
                    raise PermanentError(
                        f"model kept failing ({exc.kind}) for this record while serving "
                        f"others; {failed} attempts",
                        reason="model_unavailable",
                    ) from exc
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self.policy.max_s)
