"""A Messages-API message read as an :class:`~escalator.contract.messages.Attempt`: the one
parse of an answer, for a real-time call (``adapter.AnthropicClassifier``) and a batch result
(the batch lane) alike, so a batch answer is judged, priced and logged exactly as a real-time
one is. ``usage.service_tier`` says ``batch`` on a batch result, and the price table halves it.
"""

from __future__ import annotations

from typing import Any

import orjson

from escalator.contract.messages import Attempt
from escalator.model.prices import PriceTable, Usage
from escalator.model.task import Task


def attempt_of(
    message: Any,
    *,
    tier: str,
    model: str,
    task: Task,
    prices: PriceTable,
    latency_ms: float = 0.0,
    request_id: str | None = None,
    credit_token: str | None = None,
) -> Attempt:
    """The Attempt of one answered message (the SDK's ``Message``, beta or not).
    ``credit_token``: the fallback credit token the call echoed, if any."""
    u = message.usage
    created = getattr(u, "cache_creation", None)
    geo = getattr(u, "inference_geo", None)
    usage = Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_write_tokens=u.cache_creation_input_tokens or 0,
        cache_read_tokens=u.cache_read_input_tokens or 0,
        cache_write_1h_tokens=created.ephemeral_1h_input_tokens if created else 0,
        inference_geo=geo,
        service_tier=getattr(u, "service_tier", None),  # "batch" is half price (prices.py)
    )
    refusal: str | None = None
    token: str | None = None
    label: str | None
    error: str | None
    if message.stop_reason == "refusal":
        details = getattr(message, "stop_details", None)
        refusal = (details.category if details else None) or "uncategorized"
        # The beta's field: a batch result's Message (not beta) has no such attribute.
        token = getattr(details, "fallback_credit_token", None)
        label, confidence, error = None, 0.0, "refused"
    else:
        raw_text = "".join(b.text for b in message.content if b.type == "text")
        label, confidence, error = validate(task, raw_text, message.stop_reason)
    return Attempt(
        tier=tier,
        model=model,
        label=label,
        confidence=confidence,
        valid=error is None,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cost_usd=prices.cost_usd(model, usage),
        latency_ms=latency_ms,
        error=error,
        stop_reason=message.stop_reason,
        refusal_category=refusal,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        inference_geo=geo,
        request_id=request_id,
        fallback_credit_token=token,
        fallback_credit=_credit_outcome(getattr(u, "fallback_credit", None))
        if credit_token
        else None,
        service_tier=usage.service_tier,
    )


def validate(task: Task, raw: str, stop_reason: str | None) -> tuple[str | None, float, str | None]:
    """(label, confidence, error). An invalid answer has confidence 0 and an error code."""
    if stop_reason not in ("end_turn", "stop_sequence"):
        return None, 0.0, f"stop_reason_{stop_reason}"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, 0.0, "answer_not_json"
    if not isinstance(data, dict):
        return None, 0.0, "answer_not_object"
    answer = data.get("label")
    confidence = data.get("confidence")
    label = task.canonical_label(answer) if isinstance(answer, str) else None
    if label is None:
        return None, 0.0, "label_not_in_set"
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not 0.0 <= float(confidence) <= 1.0
    ):
        return label, 0.0, "confidence_invalid"
    return label, float(confidence), None


def _credit_outcome(usage: Any) -> str:
    """``usage.fallback_credit`` as one word: ``redeemed`` or ``not_applied:<reason>``."""
    status = getattr(usage, "status", None)
    if status is None:
        return "not_applied:no_outcome_reported"
    if status.type == "redeemed":
        return "redeemed"
    return f"not_applied:{getattr(status, 'reason', 'unknown')}"
