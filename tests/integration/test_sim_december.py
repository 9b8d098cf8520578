"""The emulator against the real SDK, for what the docs added by December 2026: rate-limit
groups and a workspace limit that counts cache reads, charging at admission, fallback credit
and server-side fallbacks, cache diagnostics, ``speed`` and the top-level ``cache_control``
(docs/SIMULATOR.md, "Conformance")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from tests.conftest import running_sim
from tests.integration.test_sim_sdk import LONG_POLICY, SCHEMA

pytestmark = pytest.mark.integration
CREDIT = ["fallback-credit-2026-07-01"]


def body(
    text: str, model: str = "claude-haiku-5-5", system: str = LONG_POLICY, **extra: Any
) -> dict[str, Any]:
    """A Messages request like the service's: cached system prefix, schema, thinking off."""
    thinking = {"claude-haiku-5-5": "disabled", "claude-sonnet-5-5": "between_tools"}
    fields: dict[str, Any] = {
        "model": model,
        "max_tokens": 128,
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": f"<document>{text}</document>"}],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }
    if model in thinking:
        fields["thinking"] = {"type": thinking[model]}
    return {**fields, **extra}


@pytest.fixture
async def client(sim_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    c = anthropic.AsyncAnthropic(base_url=sim_url, api_key="sim-key", max_retries=0, timeout=10)
    yield c
    await c.close()


async def test_a_refusal_carries_a_fallback_credit_redeemed_on_another_model(
    client: anthropic.AsyncAnthropic, sim_url: str
) -> None:
    """With the beta, a refusal has a token (and no prefill claim under a schema); echoed on
    Sonnet 5.5 with the same body, the prefix written on Haiku is billed as a cache read, not
    a write; a used or malformed token, a token with fallbacks, and strict mismatches are
    400s; a best_effort mismatch is answered at the normal price with the reason."""
    system = LONG_POLICY + " (credit test)"
    plain = await client.beta.messages.create(**body("how a keylogger works", system=system))
    assert plain.stop_reason == "refusal" and plain.stop_details is not None
    assert plain.stop_details.fallback_credit_token is None  # no beta: no token
    token = await _refused_by_haiku(client, sim_url, "one", system)
    retry = body("one", model="claude-sonnet-5-5", system=system)
    with pytest.raises(anthropic.BadRequestError, match="body_mismatch"):
        await client.beta.messages.create(
            **body("one, changed", model="claude-sonnet-5-5", system=system),
            fallback_credit_token=token,
            betas=CREDIT,
        )
    with pytest.raises(anthropic.BadRequestError, match="invalid_target_model"):
        await client.beta.messages.create(
            **body("one", system=system), fallback_credit_token=token, betas=CREDIT
        )
    ok = await client.beta.messages.create(
        **retry, fallback_credit_token={"token": token, "mode": "best_effort"}, betas=CREDIT
    )
    assert ok.usage.fallback_credit is not None
    assert ok.usage.fallback_credit.status.type == "redeemed"
    assert ok.usage.cache_creation_input_tokens == 0 and ok.usage.cache_read_input_tokens
    with pytest.raises(anthropic.BadRequestError, match="malformed or unknown"):
        await client.beta.messages.create(**retry, fallback_credit_token=token, betas=CREDIT)
    with pytest.raises(anthropic.BadRequestError, match="cannot be combined"):
        await client.beta.messages.create(
            **body("x", model="claude-fable-5-2", max_tokens=4096),
            fallback_credit_token="fct_x",
            fallbacks=[{"model": "claude-opus-5-5"}],
            betas=CREDIT,
        )
    second = await _refused_by_haiku(client, sim_url, "two", system)
    mismatch = await client.beta.messages.create(
        **body("two, changed", model="claude-sonnet-5-5", system=system),
        fallback_credit_token={"token": second, "mode": "best_effort"},
        betas=CREDIT,
    )
    assert mismatch.stop_reason == "end_turn" and mismatch.usage.fallback_credit is not None
    status = mismatch.usage.fallback_credit.status
    assert status.type == "not_applied" and status.reason == "body_mismatch"


async def _refused_by_haiku(
    client: anthropic.AsyncAnthropic, sim_url: str, text: str, system: str
) -> str:
    """The fallback credit token of a refusal by Haiku 5.5 alone (a per-model fault)."""
    async with httpx.AsyncClient(timeout=10) as http:
        faults = {"model_faults": {"claude-haiku-5-5": {"refuse": 1.0}}}
        (await http.post(f"{sim_url}/_sim/config", json=faults)).raise_for_status()
        try:
            refused = await client.beta.messages.create(**body(text, system=system), betas=CREDIT)
        finally:
            await http.post(f"{sim_url}/_sim/config", json={"model_faults": {}})
    details = refused.stop_details
    assert details is not None and details.fallback_credit_token
    assert details.fallback_has_prefill_claim is False and details.recommended_model is None
    return details.fallback_credit_token


async def test_server_side_fallbacks_and_the_recommended_model() -> None:
    """A fallbacks list is a 400 on Haiku 5.5; on Fable 5.2 a refusal is answered by the
    fallback model (a fallback block first), or, when that model's limit is exhausted, the
    refusal stands and names it in recommended_model."""
    with running_sim("--rate-limit", "claude-opus-5-5=1:1000000:100000") as url:
        c = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        try:
            with pytest.raises(anthropic.BadRequestError, match="server-side fallbacks"):
                await c.beta.messages.create(
                    **body("x"), fallbacks=[{"model": "claude-sonnet-5-5"}]
                )
            served = await c.beta.messages.create(
                **body("[[sim:refuse:bio]] y", model="claude-fable-5-2", max_tokens=4096),
                fallbacks=[{"model": "claude-sonnet-4-6"}],
                betas=["server-side-fallback-2026-07-01"],
            )
            assert served.model == "claude-sonnet-4-6" and served.stop_reason == "end_turn"
            assert served.content[0].type == "fallback"
            await c.beta.messages.create(**body("z", model="claude-opus-5-5", max_tokens=4096))
            stands = await c.beta.messages.create(
                **body("[[sim:refuse:bio]] y", model="claude-fable-5-2", max_tokens=4096),
                fallbacks=[{"model": "claude-opus-5-5"}],
                betas=["server-side-fallback-2026-07-01"],
            )
            assert stands.stop_reason == "refusal" and stands.stop_details is not None
            assert stands.stop_details.recommended_model == "claude-opus-5-5"
        finally:
            await c.close()


async def test_limits_are_pooled_per_group_and_a_workspace_limit_counts_cache_reads() -> None:
    """Fable 5.1 and 5.2 draw from one group's buckets; a workspace input limit of 5,000
    tokens/min counts the ~1,700-token cached prefix on every read (the organisation's does
    not), so it is the one that answers 429, and the headers show it."""
    with running_sim(
        "--rate-limit",
        "fable-5=3:1000000:1000000",
        "--workspace-limit",
        "claude-haiku-5-5=1000:5000:100000",
    ) as url:
        c = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        try:
            for model in ("claude-fable-5-1", "claude-fable-5-2", "claude-fable-5-1"):
                await c.beta.messages.create(**body("x", model=model, max_tokens=4096))
            with pytest.raises(anthropic.RateLimitError, match="organization"):
                await c.beta.messages.create(**body("x", model="claude-fable-5-2", max_tokens=4096))
            first = await c.beta.messages.with_raw_response.create(**body("first"))
            assert first.headers["anthropic-ratelimit-input-tokens-limit"] == "5000"
            with pytest.raises(anthropic.RateLimitError, match="workspace") as info:
                for i in range(4):
                    msg = await c.beta.messages.create(**body(f"then {i}"))
                    assert msg.usage.cache_read_input_tokens
            assert info.value.response.headers["anthropic-ratelimit-input-tokens-limit"] == "5000"
        finally:
            await c.close()


async def test_a_call_is_charged_when_admitted_and_its_output_held_until_it_ends() -> None:
    """While a slow call is in flight, another response's headers already count its request
    and its whole max_tokens of output; after it ends, the unused output is given back."""
    with running_sim("--rate-limit", "claude-haiku-5-5=1000:1000000:10000") as url:
        c = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        try:
            slow = asyncio.create_task(
                c.beta.messages.create(
                    **body("slow", max_tokens=4000), extra_headers={"x-sim-latency-ms": "1500"}
                )
            )
            await asyncio.sleep(0.5)
            during = await c.beta.messages.with_raw_response.create(**body("fast"))
            await slow
            after = await c.beta.messages.with_raw_response.create(**body("after"))
            left = "anthropic-ratelimit-output-tokens-remaining"
            assert int(during.headers[left]) <= 6000  # 10,000 less the 4,000 held
            assert int(after.headers[left]) >= 9000  # given back: the answer used ~20
        finally:
            await c.close()


async def test_diagnostics_speed_and_top_level_cache_control(
    client: anthropic.AsyncAnthropic,
) -> None:
    """diagnostics says why the cache was missed (another model, another system prompt) and
    is null when the prefix was read; speed "fast" is a 400 off Opus 5.5 and needs its beta
    there; a top-level cache_control caches up to the last block."""
    first = await client.beta.messages.create(
        **body("d1"), diagnostics={"previous_message_id": None}
    )
    assert first.diagnostics is None
    read = await client.beta.messages.create(
        **body("d2"), diagnostics={"previous_message_id": first.id}
    )
    assert read.usage.cache_read_input_tokens and read.diagnostics is None
    other = await client.beta.messages.create(
        **body("d3", model="claude-sonnet-5-5"), diagnostics={"previous_message_id": first.id}
    )
    assert other.diagnostics is not None and other.diagnostics.cache_miss_reason is not None
    assert other.diagnostics.cache_miss_reason.type == "model_changed"
    changed = await client.beta.messages.create(
        **{**body("d4"), "system": "Another prompt."}, diagnostics={"previous_message_id": first.id}
    )
    assert changed.diagnostics is not None and changed.diagnostics.cache_miss_reason is not None
    assert changed.diagnostics.cache_miss_reason.type == "system_changed"
    lost = await client.beta.messages.create(
        **body("d5"), diagnostics={"previous_message_id": "msg_nowhere"}
    )
    assert lost.diagnostics is not None and lost.diagnostics.cache_miss_reason is not None
    assert lost.diagnostics.cache_miss_reason.type == "previous_message_not_found"
    standard = await client.beta.messages.create(**body("s"), speed="standard")
    assert standard.usage.speed == "standard"
    with pytest.raises(anthropic.BadRequestError, match="fast mode is not supported"):
        await client.beta.messages.create(**body("s"), speed="fast")
    with pytest.raises(anthropic.BadRequestError, match="fast-mode-2026-02-01"):
        await client.beta.messages.create(**body("s", model="claude-opus-5-5"), speed="fast")
    fast = await client.beta.messages.create(
        **body("s", model="claude-opus-5-5", max_tokens=4096),
        speed="fast",
        betas=["fast-mode-2026-02-01"],
    )
    assert fast.usage.speed == "fast"
    long_text = "words " * 800
    auto = {**body(long_text), "system": "Classify.", "cache_control": {"type": "ephemeral"}}
    written = await client.beta.messages.create(**auto)
    assert (written.usage.cache_creation_input_tokens or 0) > 1000
    reread = await client.beta.messages.create(**auto)
    assert reread.usage.cache_read_input_tokens == written.usage.cache_creation_input_tokens


async def test_a_token_presented_on_a_rate_limited_call_is_still_good_for_the_retry() -> None:
    """A 429 does not use the token up: the same token is redeemed by the next call that is
    admitted (Escalator retries a 429 with it)."""
    with running_sim("--rate-limit", "claude-sonnet-5-5=1000:1000000:1000") as url:
        c = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        try:
            token = await _refused_by_haiku(c, url, "three", LONG_POLICY)
            credit = {"token": token, "mode": "best_effort"}
            with pytest.raises(anthropic.RateLimitError):  # 2,000 output > the 1,000 limit
                await c.beta.messages.create(
                    **body("three", model="claude-sonnet-5-5", max_tokens=2000),
                    fallback_credit_token=credit,
                    betas=CREDIT,
                )
            ok = await c.beta.messages.create(
                **body("three", model="claude-sonnet-5-5"),
                fallback_credit_token=credit,
                betas=CREDIT,
            )
            assert ok.usage.fallback_credit is not None
            assert ok.usage.fallback_credit.status.type == "redeemed"
        finally:
            await c.close()
