"""``model/answers.py``: one parse of an answer, real-time or from a batch."""

from __future__ import annotations

from typing import Any

from anthropic.types import Message

from escalator.model.answers import attempt_of
from escalator.model.prices import Usage, load_prices
from escalator.model.task import load_task

PRICES = load_prices(None)
MODEL = "claude-haiku-5-5"


def refusal(service_tier: str) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": "refusal",
        "stop_sequence": None,
        "stop_details": {"type": "refusal", "category": "cyber", "explanation": None},
        "usage": {"input_tokens": 200, "output_tokens": 5, "service_tier": service_tier},
    }


def test_a_refusal_in_a_batch_result_is_a_refused_attempt_at_the_batch_price() -> None:
    """A batch result's message is the SDK's ``Message`` (not beta), whose refusal details
    carry no fallback credit token: it reads as a refused attempt with its category, no
    token, priced at the batch rate (before the fix it raised AttributeError, and the lane's
    record waited forever)."""
    message = Message.model_validate(refusal("batch"))
    attempt = attempt_of(message, tier="cheap", model=MODEL, task=load_task(None), prices=PRICES)
    assert attempt.refused and attempt.refusal_category == "cyber"
    assert attempt.fallback_credit_token is None and attempt.label is None
    assert attempt.service_tier == "batch"
    full = PRICES.cost_usd(MODEL, Usage(input_tokens=200, output_tokens=5))
    assert attempt.cost_usd == full / 2
