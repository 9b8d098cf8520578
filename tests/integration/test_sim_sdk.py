"""The simulator answers the real anthropic SDK; each injected fault is the SDK's own error."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import anthropic
import httpx2 as httpx
import orjson
import pytest

from tests.conftest import running_sim

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["safe", "unsafe", "review-needed"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
LONG_POLICY = "Classify the document for a content moderation queue. " * 120  # > 1024 tokens


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
) -> anthropic.types.Message:
    return await client.messages.create(
        model=model,
        max_tokens=64,
        system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": f"<document>{text}</document>"}],
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
        extra_headers=headers or {},
        timeout=timeout_s if timeout_s is not None else anthropic.NOT_GIVEN,
    )


async def test_structured_answer_and_deterministic_usage(client: anthropic.AsyncAnthropic) -> None:
    """A schema-valid JSON answer comes back, with the same usage for the same request."""
    first = await ask(client, "What a lovely afternoon for a picnic in the park.")
    second = await ask(client, "What a lovely afternoon for a picnic in the park.")
    block = first.content[0]
    assert block.type == "text"
    answer = orjson.loads(block.text)
    assert answer["label"] == "safe" and 0.0 <= answer["confidence"] <= 1.0
    assert first.stop_reason == "end_turn"
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.usage.input_tokens == second.usage.input_tokens
    assert first.content == second.content


async def test_strong_profile_reads_mitigation_that_the_cheap_one_misses(
    client: anthropic.AsyncAnthropic,
) -> None:
    """On a text that discusses harm to prevent it, cheap says unsafe (unsure), strong says safe."""
    text = "How schools can prevent violence and report threats safely, with help for victims."
    cheap = orjson.loads((await ask(client, text)).content[0].text)  # type: ignore[union-attr]
    strong = orjson.loads(
        (await ask(client, text, model="claude-sonnet-5-5")).content[0].text  # type: ignore[union-attr]
    )
    assert cheap["confidence"] < 0.7
    assert strong["label"] == "safe" and strong["confidence"] >= 0.8


async def test_cached_system_prefix_is_written_then_read(client: anthropic.AsyncAnthropic) -> None:
    """A long cache_control prefix reports a cache write first, then cache reads."""
    system = LONG_POLICY + "(cache test A)"
    first = await ask(client, "hello there", system=system, model="claude-sonnet-5-5")
    second = await ask(client, "another text", system=system, model="claude-sonnet-5-5")
    assert (
        first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens > 1024
    )
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0


async def test_short_prefix_is_not_cached(client: anthropic.AsyncAnthropic) -> None:
    """Below the minimum cacheable length nothing is cached, as with the real API."""
    for _ in range(2):
        msg = await ask(client, "hello", system="Short policy.")
        assert not msg.usage.cache_creation_input_tokens
        assert not msg.usage.cache_read_input_tokens


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("429", anthropic.RateLimitError),
        ("529", anthropic.OverloadedError),
        ("500", anthropic.InternalServerError),
    ],
)
async def test_header_fault_surfaces_as_sdk_error(
    client: anthropic.AsyncAnthropic, fault: str, error: type[Exception]
) -> None:
    """x-sim-fault makes the SDK raise its own exception type for that status."""
    with pytest.raises(error) as info:
        await ask(client, "hi there friend", headers={"x-sim-fault": fault})
    if fault == "429":
        assert isinstance(info.value, anthropic.RateLimitError)
        assert info.value.response.headers["retry-after"] == "1"


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
    answer = orjson.loads(msg.content[0].text)  # type: ignore[union-attr]
    if fault == "bad-schema":
        assert "confidence" not in answer
    else:
        assert answer["label"] not in SCHEMA["properties"]["label"]["enum"]  # type: ignore[index]


async def test_text_marker_injects_fault(client: anthropic.AsyncAnthropic) -> None:
    """A [[sim:KIND]] marker in the text fails that request every time (for pipeline tests)."""
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError):
            await ask(client, "please fail [[sim:529]]")


async def test_unknown_model_and_bad_request(client: anthropic.AsyncAnthropic) -> None:
    """An unknown model is NotFoundError; a missing user turn is BadRequestError."""
    with pytest.raises(anthropic.NotFoundError):
        await ask(client, "x", model="gpt-nothing")
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(
            model="claude-haiku-5-5",
            max_tokens=10,
            messages=[{"role": "assistant", "content": "hi"}],
        )


@pytest.fixture
def faulty_sim() -> Iterator[str]:
    with running_sim("--fault", "529:1.0", "--latency", "fixed:200") as url:
        yield url


async def test_run_flags_and_runtime_reconfiguration(faulty_sim: str) -> None:
    """--fault and --latency apply to every call; POST /_sim/config changes them live."""
    client = anthropic.AsyncAnthropic(base_url=faulty_sim, api_key="k", max_retries=0, timeout=5)
    try:
        started = time.monotonic()
        with pytest.raises(anthropic.OverloadedError):
            await ask(client, "some text here")
        assert time.monotonic() - started >= 0.2
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{faulty_sim}/_sim/config", json={"faults": {}, "latency": "0"})
            assert r.status_code == 200, r.text
            assert r.json()["stats"]["fault:529"] == 1
        msg = await ask(client, "some text here")
        assert msg.stop_reason == "end_turn"
    finally:
        await client.close()
