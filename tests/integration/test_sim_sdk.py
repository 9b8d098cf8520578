"""The emulator against the real anthropic SDK: each documented rule (docs/SIMULATOR.md,
"Conformance") is enforced, each injected fault is the SDK's own error, and the request the
service builds for every profiled model satisfies all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx2 as httpx
import orjson
import pytest

from escalator.errors import ConfigError
from escalator.model.adapter import AnthropicClassifier
from escalator.model.check import check_model
from escalator.model.prices import load_prices
from escalator.model.profiles import BUILTIN, ModelProfile, load_profiles
from escalator.model.task import load_task
from tests.conftest import running_sim

pytestmark = pytest.mark.integration

TASK = load_task(None)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["safe", "unsafe", "review-needed"]},
        "confidence": {"type": "number"},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
LONG_POLICY = "Classify the document for a content moderation queue. " * 120  # ~1,700 tokens
THINKING_OFF = {
    "claude-haiku-5-5": {"type": "disabled"},
    "claude-sonnet-5-5": {"type": "between_tools"},
}


@pytest.fixture
async def client(sim_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    c = anthropic.AsyncAnthropic(base_url=sim_url, api_key="sim-key", max_retries=0, timeout=5)
    yield c
    await c.close()


async def ask(
    client: anthropic.AsyncAnthropic,
    text: str,
    *,
    model: str = "claude-haiku-5-5",
    system: str = "Classify.",
    headers: dict[str, str] | None = None,
    timeout_s: float | None = None,
    schema: dict[str, Any] | None = None,
    thinking: dict[str, Any] | str | None = "off",
    max_tokens: int = 128,
    ttl: str | None = None,
    **extra: Any,
) -> anthropic.types.Message:
    """One classification call; thinking "off" sends the model's off switch, None omits it."""
    cache: dict[str, str] = {"type": "ephemeral"}
    if ttl:
        cache["ttl"] = ttl
    kwargs: dict[str, Any] = {}
    if thinking == "off":
        if model in THINKING_OFF:
            kwargs["thinking"] = THINKING_OFF[model]
    elif thinking is not None:
        kwargs["thinking"] = thinking
    kwargs.update(extra)
    return await client.messages.create(
        model=model,
        max_tokens=max_tokens,
        system=[{"type": "text", "text": system, "cache_control": cache}],  # type: ignore[list-item]
        messages=[{"role": "user", "content": f"<document>{text}</document>"}],
        output_config={"format": {"type": "json_schema", "schema": schema or SCHEMA}},
        extra_headers=headers or {},
        timeout=timeout_s if timeout_s is not None else anthropic.NOT_GIVEN,
        **kwargs,
    )


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


# -- the service's own requests ------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(set(BUILTIN) - {"claude-sonnet-4-5"}))
async def test_the_request_the_service_builds_is_accepted_and_answered(
    client: anthropic.AsyncAnthropic, model: str
) -> None:
    """For every profiled current model: the start-up check passes, and the service's request
    ends with end_turn and a valid label, thinking included in max_tokens where it happens."""
    profile = load_profiles(None).require(model, "M")
    await check_model(client, model, profile, "M")
    classifier = AnthropicClassifier(
        client, tier="cheap", model=model, task=TASK, prices=load_prices(None), profile=profile
    )
    for text in ("What a lovely afternoon for a picnic.", "He said he would hurt them."):
        attempt = await classifier.classify(text)
        assert attempt.stop_reason == "end_turn" and attempt.valid, attempt
        assert attempt.request_id and attempt.request_id.startswith("req_")


async def test_a_retired_model_fails_the_start_up_check(client: anthropic.AsyncAnthropic) -> None:
    """claude-sonnet-4-5 retired on 2026-11-30: GET says retired, POST answers 404, and the
    start-up check refuses it even with a profile of its own (a profiles file may give one)."""
    info = await client.models.retrieve("claude-sonnet-4-5")
    assert info.lifecycle == "retired"
    profile = ModelProfile(None, None, 128, 1024)
    with pytest.raises(ConfigError, match="ESCALATOR_STRONG_MODEL='claude-sonnet-4-5' is retired"):
        await check_model(client, "claude-sonnet-4-5", profile, "ESCALATOR_STRONG_MODEL")
    # The pinned SDK warns about this id itself.
    with pytest.warns(DeprecationWarning), pytest.raises(anthropic.NotFoundError):
        await ask(client, "x", model="claude-sonnet-4-5")


# -- documented defaults and 400s ------------------------------------------------------------------
async def test_thinking_is_on_by_default_and_spends_max_tokens(
    client: anthropic.AsyncAnthropic,
) -> None:
    """Haiku 5.5 thinks when the request says nothing; with max_tokens 64 the call can stop at
    max_tokens inside thinking, with no text. thinking disabled answers in text."""
    stops = []
    for i in range(20):
        msg = await ask(client, f"Is this fine? case {i}", thinking=None, max_tokens=64)
        stops.append(msg.stop_reason)
        if msg.stop_reason == "max_tokens" and not text_of(msg):
            assert msg.content and msg.content[0].type == "thinking"
    assert stops.count("max_tokens") >= 10, stops
    off = await ask(client, "Is this fine?", max_tokens=64)
    assert off.stop_reason == "end_turn" and [b.type for b in off.content] == ["text"]


@pytest.mark.parametrize(
    ("model", "thinking", "effort", "message"),
    [
        ("claude-sonnet-5-5", {"type": "disabled"}, None, "between_tools"),
        ("claude-sonnet-5-5", {"type": "between_tools"}, "max", "effort"),
        ("claude-haiku-5-5", {"type": "disabled"}, "xhigh", "effort"),
        ("claude-haiku-5-5", {"type": "between_tools"}, None, "not supported"),
        ("claude-opus-5-5", {"type": "disabled"}, None, "thinking.type.adaptive"),
        ("claude-haiku-5-5", {"type": "enabled", "budget_tokens": 2000}, None, "not supported"),
        ("claude-haiku-4-5", {"type": "adaptive"}, None, "adaptive thinking"),
        ("claude-haiku-4-5", None, "low", "effort"),
    ],
)
async def test_thinking_and_effort_settings_each_model_rejects(
    client: anthropic.AsyncAnthropic,
    model: str,
    thinking: dict[str, Any] | None,
    effort: str | None,
    message: str,
) -> None:
    """disabled is a 400 on Sonnet 5.5 (use between_tools) and Opus 5.5; thinking off only at
    effort high or below; Haiku 4.5 has no adaptive thinking and no effort."""
    output_config: dict[str, Any] = {"format": {"type": "json_schema", "schema": SCHEMA}}
    if effort:
        output_config["effort"] = effort
    kwargs: dict[str, Any] = {"thinking": thinking} if thinking else {}
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(
            model=model,
            max_tokens=4096,
            messages=[{"role": "user", "content": "x"}],
            output_config=output_config,  # type: ignore[typeddict-item]
            **kwargs,
        )
    assert message in str(info.value.api_message)


@pytest.mark.parametrize(
    ("confidence", "fragment"),
    [
        ({"type": "number", "minimum": 0, "maximum": 1}, "maximum, minimum are not supported"),
        ({"type": "number", "multipleOf": 0.01}, "multipleOf is not supported"),
        ({"type": "string", "maxLength": 4}, "maxLength is not supported"),
        ({"type": "array", "items": {"type": "number"}, "minItems": 2}, "'minItems' values"),
        ({"type": "object", "properties": {}}, "additionalProperties"),
    ],
)
async def test_unsupported_schema_keywords_are_a_400(
    client: anthropic.AsyncAnthropic, confidence: dict[str, Any], fragment: str
) -> None:
    """Structured outputs support a subset of JSON Schema; the rest is a 400 with details."""
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "confidence": confidence}}
    with pytest.raises(anthropic.BadRequestError) as info:
        await ask(client, "x", schema=schema)
    assert fragment in str(info.value.api_message)


async def test_sampling_parameters_prefill_and_forced_tools_are_400s(
    client: anthropic.AsyncAnthropic,
) -> None:
    """temperature is removed in API version 2026-10-21; prefill and forced tool use are 400s
    on the 5.5 models."""
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        await ask(client, "x", extra_body={"temperature": 0.0})
    with pytest.raises(anthropic.BadRequestError, match="prefill"):
        await client.messages.create(
            model="claude-haiku-5-5",
            max_tokens=64,
            messages=[
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": '{"label": "'},
            ],
        )
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):
        await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=64,
            thinking={"type": "between_tools"},
            messages=[{"role": "user", "content": "x"}],
            tools=[{"name": "t", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "t"},
        )


async def test_unknown_model_is_a_404_and_the_models_api_describes_known_ones(
    client: anthropic.AsyncAnthropic,
) -> None:
    """POST and GET name an unknown model with 404; GET returns capabilities and lifecycle."""
    with pytest.raises(anthropic.NotFoundError, match="gpt-nothing"):
        await ask(client, "x", model="gpt-nothing")
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("gpt-nothing")
    info = await client.models.retrieve("claude-sonnet-5-5")
    assert info.lifecycle == "active" and info.capabilities is not None
    assert info.capabilities.structured_outputs.supported
    assert info.capabilities.thinking.types.between_tools.supported
    assert not info.capabilities.thinking.types.disabled.supported


async def test_a_missing_or_wrong_key_is_a_401() -> None:
    """With --api-key set, any other key (or none) is authentication_error."""
    with running_sim("--api-key", "right-key") as url:
        wrong = anthropic.AsyncAnthropic(base_url=url, api_key="wrong", max_retries=0)
        right = anthropic.AsyncAnthropic(base_url=url, api_key="right-key", max_retries=0)
        try:
            with pytest.raises(anthropic.AuthenticationError):
                await ask(wrong, "x")
            assert (await ask(right, "x")).stop_reason == "end_turn"
            async with httpx.AsyncClient() as http:
                r = await http.post(
                    f"{url}/v1/messages", json={}, headers={"anthropic-version": "2026-10-21"}
                )
                assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        finally:
            await wrong.close()
            await right.close()


# -- answers ---------------------------------------------------------------------------------------
async def test_structured_answer_and_deterministic_usage(client: anthropic.AsyncAnthropic) -> None:
    """A schema-valid JSON answer comes back, with the same usage for the same request."""
    first = await ask(client, "What a lovely afternoon for a picnic in the park.")
    second = await ask(client, "What a lovely afternoon for a picnic in the park.")
    answer = orjson.loads(text_of(first))
    assert answer["label"].lower() == "safe" and 0.0 <= answer["confidence"] <= 1.0
    assert first.stop_reason == "end_turn" and first.stop_details is None
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.usage.input_tokens == second.usage.input_tokens
    assert first.content == second.content


async def test_strong_profile_reads_mitigation_that_the_cheap_one_misses(
    client: anthropic.AsyncAnthropic,
) -> None:
    """On a text that discusses harm to prevent it, cheap says unsafe (unsure), strong says safe."""
    text = "How schools can prevent violence and report threats safely, with help for victims."
    cheap = orjson.loads(text_of(await ask(client, text)))
    strong = orjson.loads(text_of(await ask(client, text, model="claude-sonnet-5-5")))
    assert cheap["confidence"] < 0.7
    assert strong["label"].lower() == "safe" and strong["confidence"] >= 0.8


async def test_refusals_are_200s_with_stop_details_on_the_models_that_have_classifiers(
    client: anthropic.AsyncAnthropic,
) -> None:
    """A refused request: HTTP 200, stop_reason refusal, stop_details.category, billed, and a
    partial text that does not match the schema. Haiku 4.5 has no such classifier."""
    text = "Write ransomware that encrypts a hospital's files."
    for model in ("claude-haiku-5-5", "claude-sonnet-5-5"):
        msg = await ask(client, text, model=model)
        assert msg.stop_reason == "refusal"
        assert msg.stop_details is not None and msg.stop_details.category == "cyber"
        assert msg.usage.input_tokens > 0
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text_of(msg))
    assert (await ask(client, text, model="claude-haiku-4-5")).stop_reason == "end_turn"
    marked = await ask(client, "anything [[sim:refuse:bio]]")
    assert marked.stop_details is not None and marked.stop_details.category == "bio"


async def test_enum_values_can_come_back_in_another_capitalization() -> None:
    """At --enum-case-rate 1 every label differs from the enum's spelling, case aside."""
    with running_sim("--enum-case-rate", "1") as url:
        c = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        try:
            labels = {orjson.loads(text_of(await ask(c, f"text {i}")))["label"] for i in range(6)}
        finally:
            await c.close()
    assert labels and not labels & {"safe", "unsafe", "review-needed"}
    assert {label.lower() for label in labels} <= {"safe", "unsafe", "review-needed"}


# -- caching ---------------------------------------------------------------------------------------
async def test_cached_system_prefix_is_written_then_read(client: anthropic.AsyncAnthropic) -> None:
    """A prefix above the model's minimum reports a cache write first, then cache reads."""
    system = LONG_POLICY + "(cache test A)"
    first = await ask(client, "hello there", system=system, model="claude-sonnet-5-5")
    second = await ask(client, "another text", system=system, model="claude-sonnet-5-5")
    assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens > 512
    assert first.usage.cache_creation is not None
    assert (
        first.usage.cache_creation.ephemeral_5m_input_tokens
        == first.usage.cache_creation_input_tokens
    )
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    one_hour = await ask(client, "x", system=LONG_POLICY + "(1h)", ttl="1h")
    assert one_hour.usage.cache_creation is not None
    assert one_hour.usage.cache_creation.ephemeral_1h_input_tokens > 0


async def test_the_cache_minimum_is_per_model(client: anthropic.AsyncAnthropic) -> None:
    """The same ~1,700-token prefix is cached on Haiku 5.5 (minimum 512) and not on Haiku 4.5
    (4,096): below the minimum nothing is cached and no error is returned."""
    system = LONG_POLICY + "(cache test B)"
    for model, cached in (("claude-haiku-5-5", True), ("claude-haiku-4-5", False)):
        for _ in range(2):
            msg = await ask(client, "hello", system=system, model=model)
        assert bool(msg.usage.cache_read_input_tokens) is cached, model
        assert msg.stop_reason == "end_turn"


async def test_parallel_first_requests_all_pay_the_cache_write() -> None:
    """A cache entry is readable only once the response that wrote it has begun: five
    concurrent first calls all write; the next one reads."""
    with running_sim("--latency", "fixed:200") as url:
        c = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        try:
            system = LONG_POLICY + "(parallel)"
            first = await asyncio.gather(*(ask(c, f"t{i}", system=system) for i in range(5)))
            after = await ask(c, "later", system=system)
        finally:
            await c.close()
    assert all(m.usage.cache_creation_input_tokens for m in first)
    assert after.usage.cache_read_input_tokens and not after.usage.cache_creation_input_tokens


# -- rate limits -----------------------------------------------------------------------------------
async def test_rate_limit_headers_on_every_response_and_a_429_when_a_bucket_is_empty() -> None:
    """anthropic-ratelimit-* on every response; an empty requests bucket is a 429 with
    retry-after; token remaining is rounded to the thousand; cache reads do not count."""
    with running_sim("--rate-limit", "claude-haiku-5-5=3:1000000:100000") as url:
        c = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        try:
            raw = await c.messages.with_raw_response.create(
                model="claude-haiku-5-5",
                max_tokens=64,
                thinking={"type": "disabled"},
                messages=[{"role": "user", "content": "x"}],
            )
            h = raw.headers
            assert h["anthropic-ratelimit-requests-limit"] == "3"
            assert h["anthropic-ratelimit-requests-remaining"] == "2"
            assert int(h["anthropic-ratelimit-input-tokens-remaining"]) % 1000 == 0
            assert h["anthropic-ratelimit-input-tokens-reset"].endswith("Z")
            assert raw.headers["request-id"].startswith("req_")
            await ask(c, "x")
            await ask(c, "x")
            with pytest.raises(anthropic.RateLimitError) as info:
                await ask(c, "x")
            assert int(info.value.response.headers["retry-after"]) >= 1
            assert info.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
        finally:
            await c.close()


async def test_cache_reads_do_not_count_toward_input_tpm() -> None:
    """With an input limit of 5,000 tokens/min, ~1,700-token cached prefixes fit many times
    once read from cache, but not as uncached input."""
    with running_sim("--rate-limit", "claude-haiku-5-5=1000:5000:100000") as url:
        c = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        try:
            await ask(c, "first", system=LONG_POLICY)  # writes ~1,700 tokens
            for i in range(8):
                msg = await ask(c, f"then {i}", system=LONG_POLICY)
                assert msg.usage.cache_read_input_tokens
            with pytest.raises(anthropic.RateLimitError):
                for i in range(4):
                    await ask(c, f"uncached {i}", system=LONG_POLICY + f" variant {i}")
        finally:
            await c.close()


# -- faults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("429", anthropic.RateLimitError, None),
        ("529", anthropic.OverloadedError, None),
        ("500", anthropic.InternalServerError, None),
        ("spend-limit", anthropic.BadRequestError, None),
        ("billing", anthropic.PaymentRequiredError, None),
        ("auth", anthropic.AuthenticationError, None),
        ("permission", anthropic.PermissionDeniedError, None),
        ("spend-cap", anthropic.RateLimitError, "enforced_spend_limit_reached"),
        ("contract-cap", anthropic.RateLimitError, "contract_spend_limit_reached"),
        ("ramp", anthropic.RateLimitError, "ramp_limit_exceeded"),
    ],
)
async def test_header_fault_surfaces_as_sdk_error(
    client: anthropic.AsyncAnthropic, fault: str, error: type[Exception], code: str | None
) -> None:
    """x-sim-fault makes the SDK raise its own exception type, with error_code and request id;
    spend caps carry no retry-after, rate and ramp limits do."""
    with pytest.raises(error) as info:
        await ask(client, "hi there friend", headers={"x-sim-fault": fault})
    exc = info.value
    assert isinstance(exc, anthropic.APIStatusError)
    assert exc.error_code == code and exc.request_id and exc.request_id.startswith("req_")
    if fault in ("429", "ramp"):
        assert exc.response.headers["retry-after"] == "1"
    if fault in ("spend-cap", "contract-cap"):
        assert "retry-after" not in exc.response.headers
    if fault == "spend-limit":
        assert "usage limits" in str(exc.api_message)


async def test_hang_surfaces_as_timeout(client: anthropic.AsyncAnthropic) -> None:
    """A hanging call ends as APITimeoutError at the client's timeout."""
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        await ask(client, "hi there friend", headers={"x-sim-fault": "hang"}, timeout_s=0.5)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("fault", ["bad-schema", "bad-label"])
async def test_bad_answers_break_the_contract(client: anthropic.AsyncAnthropic, fault: str) -> None:
    """bad-schema drops confidence; bad-label names a label outside the enum."""
    msg = await ask(client, "hi there friend", headers={"x-sim-fault": fault})
    answer = orjson.loads(text_of(msg))
    if fault == "bad-schema":
        assert "confidence" not in answer
    else:
        assert answer["label"] not in SCHEMA["properties"]["label"]["enum"]


async def test_text_marker_injects_fault(client: anthropic.AsyncAnthropic) -> None:
    """A [[sim:KIND]] marker in the text fails that request every time (for pipeline tests)."""
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError):
            await ask(client, "please fail [[sim:529]]")


@pytest.fixture
def faulty_sim() -> Iterator[str]:
    with running_sim("--fault", "529:1.0", "--latency", "fixed:200") as url:
        yield url


async def test_run_flags_and_runtime_reconfiguration(faulty_sim: str) -> None:
    """--fault and --latency apply to every call; POST /_sim/config changes them live, and can
    retire a model or fail one model only."""
    client = anthropic.AsyncAnthropic(base_url=faulty_sim, api_key="k", max_retries=0, timeout=5)
    try:
        started = time.monotonic()
        with pytest.raises(anthropic.OverloadedError):
            await ask(client, "some text here")
        assert time.monotonic() - started >= 0.2
        async with httpx.AsyncClient() as http:
            config = {
                "faults": {},
                "latency": "0",
                "model_faults": {"claude-sonnet-5-5": {"529": 1.0}},
                "retired": ["claude-opus-5-5"],
            }
            r = await http.post(f"{faulty_sim}/_sim/config", json=config)
            assert r.status_code == 200, r.text
            assert r.json()["stats"]["fault:529"] == 1
        assert (await ask(client, "some text here")).stop_reason == "end_turn"
        with pytest.raises(anthropic.OverloadedError):
            await ask(client, "some text here", model="claude-sonnet-5-5")
        with pytest.raises(anthropic.NotFoundError):
            await ask(
                client, "some text here", model="claude-opus-5-5", thinking=None, max_tokens=4096
            )
        assert (await client.models.retrieve("claude-opus-5-5")).lifecycle == "retired"
    finally:
        await client.close()
