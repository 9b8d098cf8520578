"""The emulator's Message Batches API (escalator_dev/emulator/batches.py, batch_routes.py),
driven through the real ``anthropic`` SDK (``client.messages.batches``) against the emulator's
aiohttp application in this process: each documented behaviour of docs/SIMULATOR.md ("Message
Batches") is what a client sees."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from aiohttp.test_utils import TestServer

from escalator.model.prices import Usage, load_prices
from escalator_dev.emulator import server as sim_server
from escalator_dev.emulator.batches import BatchSettings
from escalator_dev.emulator.server import SimConfig, make_app

HOUR = 3600.0
PRICES = load_prices(None)


def params(text: str = "a kind note about gardening", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-haiku-5-5",
        "max_tokens": 64,
        "thinking": {"type": "disabled"},
        "system": "Classify.",
        "messages": [{"role": "user", "content": f"<document>{text}</document>"}],
    }
    body.update(extra)
    return body


@dataclass
class Sim:
    url: str
    client: anthropic.AsyncAnthropic
    http: aiohttp.ClientSession

    async def config(self, **changes: Any) -> dict[str, Any]:
        """POST /_sim/config (the runtime control tests and the demo use)."""
        async with self.http.post(f"{self.url}/_sim/config", json=changes) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 200, body
            return body

    async def advance(self, seconds: float) -> None:
        await self.config(batch_advance_s=seconds)

    async def results(self, batch_id: str) -> dict[str, Any]:
        """custom_id -> result, read through the SDK's JSONL decoder."""
        out: dict[str, Any] = {}
        async for line in await self.client.messages.batches.results(batch_id):
            assert line.custom_id not in out
            out[line.custom_id] = line.result
        return out


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    server = TestServer(make_app(SimConfig(batch=BatchSettings(latency_s=3600.0))))
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    client = anthropic.AsyncAnthropic(base_url=url, api_key="sim-key", max_retries=0, timeout=10)
    async with aiohttp.ClientSession() as http:
        yield Sim(url, client, http)
    await client.close()
    await server.close()


async def test_a_batch_is_in_progress_until_its_time_then_ends_with_every_result(sim: Sim) -> None:
    """Counts stay `processing` until the whole batch ends; then every request has one result:
    succeeded, or errored for a bad model (404), bad params (400) or a server fault (500)."""
    batch = await sim.client.messages.batches.create(
        requests=[
            {"custom_id": "ok", "params": params()},  # type: ignore[typeddict-item]
            {"custom_id": "no-model", "params": params(model="claude-nope-9")},  # type: ignore[typeddict-item]
            {"custom_id": "bad-params", "params": params(max_tokens=0)},  # type: ignore[typeddict-item]
            {"custom_id": "server-fault", "params": params("boom [[sim:500]]")},  # type: ignore[typeddict-item]
        ]
    )
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.expires_at - batch.created_at == timedelta(hours=24)
    await sim.advance(HOUR / 2)  # half the requests are due: the counts do not show it
    half = await sim.client.messages.batches.retrieve(batch.id)
    assert half.processing_status == "in_progress"
    assert half.request_counts.processing == 4 and half.request_counts.succeeded == 0
    await sim.advance(HOUR / 2)
    done = await sim.client.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended"
    assert done.ended_at == done.created_at + timedelta(hours=1)
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 1, 3)
    assert done.results_url == f"{sim.url}/v1/messages/batches/{batch.id}/results"
    results = await sim.results(batch.id)
    assert set(results) == {"ok", "no-model", "bad-params", "server-fault"}
    assert results["ok"].type == "succeeded"
    message = results["ok"].message
    assert orjson.loads(message.content[0].text)["label"] == "safe"
    assert message.usage.service_tier == "batch"
    errors = {k: (r.type, r.error.error.type) for k, r in results.items() if k != "ok"}
    assert errors == {
        "no-model": ("errored", "not_found_error"),
        "bad-params": ("errored", "invalid_request_error"),
        "server-fault": ("errored", "api_error"),
    }


async def test_results_are_jsonl_one_line_per_request_not_in_request_order(sim: Sim) -> None:
    """The results file is JSONL: one object per request, custom_id and result, in an order
    that is not the order of the requests."""
    ids = [f"r{i:02d}" for i in range(20)]
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": i, "params": params(f"text {i}")} for i in ids]  # type: ignore[typeddict-item]
    )
    await sim.advance(HOUR)
    ended = await sim.client.messages.batches.retrieve(batch.id)
    assert ended.results_url is not None
    headers = {"x-api-key": "sim-key", "anthropic-version": "2023-06-01"}
    async with sim.http.get(ended.results_url, headers=headers) as response:
        assert response.status == 200
        raw = await response.read()
    lines = raw.decode().splitlines()
    assert len(lines) == 20 and raw.endswith(b"\n")
    rows = [orjson.loads(line) for line in lines]
    assert sorted(r["custom_id"] for r in rows) == ids
    assert [r["custom_id"] for r in rows] != ids
    assert {r["result"]["type"] for r in rows} == {"succeeded"}


async def test_an_item_is_answered_by_the_same_path_as_a_real_time_call(sim: Sim) -> None:
    """The same params give the same Message in a batch as from /v1/messages, except the
    tier; priced from its usage, the batch answer costs exactly half."""
    text = "how to report a phishing email to the bank"
    live = await sim.client.messages.create(**params(text))
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": "one", "params": params(text)}]  # type: ignore[typeddict-item]
    )
    await sim.advance(HOUR)
    queued = (await sim.results(batch.id))["one"].message
    assert queued.content == live.content and queued.id == live.id
    assert live.usage.service_tier == "standard" and queued.usage.service_tier == "batch"
    assert queued.usage.input_tokens == live.usage.input_tokens
    assert queued.usage.output_tokens == live.usage.output_tokens

    def cost(message: anthropic.types.Message) -> float:
        usage = message.usage
        return PRICES.cost_usd(
            message.model,
            Usage(
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_creation_input_tokens or 0,
                usage.cache_read_input_tokens or 0,
                service_tier=usage.service_tier,
            ),
        )

    assert cost(live) > 0
    assert cost(queued) == pytest.approx(0.5 * cost(live), rel=1e-12)


async def test_batch_items_do_not_draw_on_the_real_time_rate_limits(sim: Sim) -> None:
    """With one request per minute left for real-time calls, a batch of ten is answered in
    full, and the real-time request is still there afterwards."""
    await sim.config(default_limits="1:1000000:100000")
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": f"n{i}", "params": params(f"note {i}")} for i in range(10)]  # type: ignore[typeddict-item]
    )
    await sim.advance(HOUR)
    ended = await sim.client.messages.batches.retrieve(batch.id)
    assert ended.request_counts.succeeded == 10
    await sim.client.messages.create(**params("still allowed"))
    with pytest.raises(anthropic.RateLimitError):
        await sim.client.messages.create(**params("the minute's one request is used"))


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([], id="no requests"),
        pytest.param(
            [{"custom_id": f"r{i}", "params": {}} for i in range(10_001)], id="10,001 requests"
        ),
        pytest.param([{"custom_id": "a b", "params": {}}], id="custom_id with a space"),
        pytest.param([{"custom_id": "x" * 65, "params": {}}], id="custom_id of 65 characters"),
        pytest.param([{"custom_id": "", "params": {}}], id="empty custom_id"),
        pytest.param([{"custom_id": "café", "params": {}}], id="custom_id not ASCII"),
        pytest.param([{"custom_id": "req/1", "params": {}}], id="custom_id with a slash"),
        pytest.param(
            [{"custom_id": "same", "params": {}}, {"custom_id": "same", "params": {}}],
            id="duplicate custom_id",
        ),
        pytest.param([{"custom_id": "a", "params": "text"}], id="params not an object"),
        pytest.param([{"custom_id": "a", "params": {"stream": True}}], id="stream"),
        pytest.param([{"custom_id": "a", "params": {}, "x": 1}], id="an unknown field"),
    ],
)
async def test_a_batch_that_breaks_a_batch_rule_is_refused_whole(
    sim: Sim, requests: list[dict[str, Any]]
) -> None:
    """Limits and custom_id rules are checked at creation: a 400 for the whole batch."""
    with pytest.raises(anthropic.BadRequestError):
        await sim.client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    page = await sim.client.messages.batches.list()
    assert page.data == []


async def test_the_documented_maximum_batch_is_accepted(sim: Sim) -> None:
    """10,000 requests (the stricter figure) with custom_ids of 64 characters are accepted."""
    requests = [{"custom_id": f"{i:064d}", "params": params(f"t{i}")} for i in range(10_000)]
    batch = await sim.client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.request_counts.processing == 10_000


async def test_a_batch_over_the_size_limit_is_a_413(sim: Sim) -> None:
    """Past the byte limit (256 MB, set lower here) the API answers 413 request_too_large."""
    await sim.config(batch_max_bytes=2_000)
    small = [{"custom_id": "a", "params": params()}]
    await sim.client.messages.batches.create(requests=small)  # type: ignore[arg-type]
    big = [{"custom_id": f"r{i}", "params": params()} for i in range(20)]
    with pytest.raises(anthropic.APIStatusError) as caught:
        await sim.client.messages.batches.create(requests=big)  # type: ignore[arg-type]
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


async def test_requests_not_processed_within_24_hours_expire(sim: Sim) -> None:
    """A batch slower than a day ends at expires_at: what was processed by then keeps its
    result, the rest is `expired`."""
    await sim.config(batch_latency_s=48 * HOUR)  # due at 12, 24, 36 and 48 hours
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": f"q{i}", "params": params(f"q {i}")} for i in range(4)]  # type: ignore[typeddict-item]
    )
    await sim.advance(23 * HOUR)
    assert (await sim.client.messages.batches.retrieve(batch.id)).processing_status == (
        "in_progress"
    )
    await sim.advance(2 * HOUR)
    ended = await sim.client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.ended_at == ended.expires_at
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (2, 2)
    results = await sim.results(batch.id)
    assert {k: r.type for k, r in results.items()} == {
        "q0": "succeeded",
        "q1": "succeeded",
        "q2": "expired",
        "q3": "expired",
    }


async def test_cancel_keeps_what_was_processed_and_cancels_the_rest(sim: Sim) -> None:
    """Cancel: `canceling` with cancel_initiated_at, then `ended`; processed requests keep
    their results, the others are `canceled`; an ended batch cannot be cancelled again."""
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": f"c{i}", "params": params(f"c {i}")} for i in range(4)]  # type: ignore[typeddict-item]
    )
    await sim.advance(HOUR / 4)  # the first request (due at 15 minutes) is processed
    canceling = await sim.client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    await sim.advance(HOUR)  # no request starts after the cancel
    ended = await sim.client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.ended_at == canceling.cancel_initiated_at + timedelta(seconds=1)
    counts = ended.request_counts
    assert (counts.succeeded, counts.canceled, counts.processing) == (1, 3, 0)
    results = await sim.results(batch.id)
    assert results["c0"].type == "succeeded"
    assert {results[f"c{i}"].type for i in (1, 2, 3)} == {"canceled"}
    with pytest.raises(anthropic.BadRequestError):
        await sim.client.messages.batches.cancel(batch.id)


async def test_delete_only_an_ended_batch_and_then_it_is_gone(sim: Sim) -> None:
    """Deleting an in-progress batch is a 400; an ended one is deleted, then 404s."""
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": "d", "params": params()}]  # type: ignore[typeddict-item]
    )
    with pytest.raises(anthropic.BadRequestError):
        await sim.client.messages.batches.delete(batch.id)
    await sim.advance(HOUR)
    deleted = await sim.client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        await sim.client.messages.batches.retrieve(batch.id)


async def test_results_are_kept_29_days_after_creation(sim: Sim) -> None:
    """After 29 days the batch is still there, archived, and its results 404."""
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": "old", "params": params()}]  # type: ignore[typeddict-item]
    )
    await sim.advance(28 * 24 * HOUR)
    assert (await sim.results(batch.id))["old"].type == "succeeded"
    await sim.advance(24 * HOUR)
    archived = await sim.client.messages.batches.retrieve(batch.id)
    assert archived.archived_at == archived.created_at + timedelta(days=29)
    with pytest.raises(anthropic.NotFoundError):
        await sim.results(batch.id)


async def test_list_is_newest_first_and_pages(sim: Sim) -> None:
    """List returns the newest batch first, `limit` per page, and the SDK pages through all."""
    created = []
    for i in range(5):
        batch = await sim.client.messages.batches.create(
            requests=[{"custom_id": f"l{i}", "params": params()}]  # type: ignore[typeddict-item]
        )
        created.append(batch.id)
    first = await sim.client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == created[::-1][:2] and first.has_more
    every = [b.id async for b in sim.client.messages.batches.list(limit=2)]
    assert every == created[::-1]
    with pytest.raises(anthropic.BadRequestError):
        await sim.client.messages.batches.list(limit=0)


async def test_batch_endpoints_have_their_own_requests_per_minute_limit(sim: Sim) -> None:
    """Past the Batches requests-per-minute limit, any batch endpoint answers 429 with
    retry-after; real-time calls are not affected."""
    await sim.config(batch_limits="3:100000")
    for _ in range(3):
        await sim.client.messages.batches.list()
    with pytest.raises(anthropic.RateLimitError) as caught:
        await sim.client.messages.batches.list()
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    await sim.client.messages.create(**params())


async def test_the_processing_queue_limit_refuses_a_batch_until_the_queue_drains(
    sim: Sim,
) -> None:
    """A batch that would put more requests in the processing queue than the limit is a 429;
    once the queued requests are processed there is room again."""
    await sim.config(batch_limits="1000:5")
    three = [{"custom_id": f"a{i}", "params": params()} for i in range(3)]
    await sim.client.messages.batches.create(requests=three)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError):
        await sim.client.messages.batches.create(requests=three)  # type: ignore[arg-type]
    await sim.advance(HOUR)
    await sim.client.messages.batches.create(requests=three)  # type: ignore[arg-type]


async def test_faults_make_a_fraction_of_items_errored_or_expired(sim: Sim) -> None:
    """--batch-fault errored:R errors about R of the items (api_error); expired:1 leaves every
    item unprocessed until the batch expires; a `hang` marker expires its item."""
    await sim.config(batch_faults={"errored": 0.3})
    many = await sim.client.messages.batches.create(
        requests=[{"custom_id": f"f{i}", "params": params(f"f {i}")} for i in range(200)]  # type: ignore[typeddict-item]
    )
    await sim.config(batch_faults={"expired": 1.0})
    stuck = await sim.client.messages.batches.create(
        requests=[{"custom_id": f"s{i}", "params": params()} for i in range(3)]  # type: ignore[typeddict-item]
    )
    await sim.config(batch_faults={})
    hung = await sim.client.messages.batches.create(
        requests=[
            {"custom_id": "fine", "params": params()},  # type: ignore[typeddict-item]
            {"custom_id": "hangs", "params": params("wait [[sim:hang]]")},  # type: ignore[typeddict-item]
        ]
    )
    await sim.advance(2 * HOUR)
    counts = (await sim.client.messages.batches.retrieve(many.id)).request_counts
    assert 35 <= counts.errored <= 85 and counts.succeeded == 200 - counts.errored
    errors = {
        r.error.error.type for r in (await sim.results(many.id)).values() if r.type == "errored"
    }
    assert errors == {"api_error"}
    assert (await sim.client.messages.batches.retrieve(stuck.id)).processing_status == "in_progress"
    assert (await sim.client.messages.batches.retrieve(hung.id)).processing_status == "in_progress"
    await sim.advance(23 * HOUR)
    stuck_ended = await sim.client.messages.batches.retrieve(stuck.id)
    assert stuck_ended.request_counts.expired == 3
    hung_results = await sim.results(hung.id)
    assert (hung_results["fine"].type, hung_results["hangs"].type) == ("succeeded", "expired")


async def test_batch_endpoints_authenticate_like_the_messages_endpoint(sim: Sim) -> None:
    """No key is a 401, a missing anthropic-version a 400, an unknown batch a 404."""
    async with sim.http.get(f"{sim.url}/v1/messages/batches") as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"
    async with sim.http.get(
        f"{sim.url}/v1/messages/batches", headers={"x-api-key": "sim-key"}
    ) as response:
        assert response.status == 400
    with pytest.raises(anthropic.NotFoundError):
        await sim.client.messages.batches.retrieve("msgbatch_nope")


async def test_a_body_that_does_not_say_json_is_a_400(sim: Sim) -> None:
    """The API wants ``content-type: application/json`` on a body (SIMULATOR.md): without it
    both endpoints answer 400, and a cancel (no body) needs none. (The lane's create posts a
    body it joined itself, relying on the SDK's default headers: tests/unit/lane/test_batches.py
    creates through this emulator.)"""
    headers = {"x-api-key": "sim-key", "anthropic-version": "2023-06-01"}
    body = orjson.dumps({"requests": [{"custom_id": "a", "params": params()}]})
    for path, payload in (
        ("/v1/messages/batches", body),
        ("/v1/messages", orjson.dumps(params())),
    ):
        for kind in ("text/plain", None):
            sent = headers if kind is None else {**headers, "content-type": kind}
            # aiohttp would say application/octet-stream for bytes: send no content-type at all
            skip = ["Content-Type"] if kind is None else []
            async with sim.http.post(
                f"{sim.url}{path}", data=payload, headers=sent, skip_auto_headers=skip
            ) as response:
                assert response.status == 400, (path, kind, await response.text())
                assert "content-type" in (await response.json())["error"]["message"]
        sent = {**headers, "content-type": "application/json; charset=utf-8"}
        async with sim.http.post(f"{sim.url}{path}", data=payload, headers=sent) as response:
            assert response.status == 200, await response.text()
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": "b", "params": params()}]  # type: ignore[typeddict-item]
    )
    cancelled = await sim.client.messages.batches.cancel(batch.id)
    assert cancelled.processing_status in ("canceling", "ended")


async def test_bad_batch_settings_at_run_time_are_a_400(sim: Sim) -> None:
    """/_sim/config refuses a clock moved back and malformed batch settings."""
    for change in (
        {"batch_advance_s": -1},
        {"batch_latency_s": "soon"},
        {"batch_faults": {"boom": 0.1}},
        {"batch_limits": "10"},
    ):
        async with sim.http.post(f"{sim.url}/_sim/config", json=change) as response:
            assert response.status == 400, change
    assert (await sim.config())["batch_advance_s"] == 0.0


async def test_processing_happens_on_the_wall_clock_too(sim: Sim) -> None:
    """Without moving the clock, a batch with a short latency ends by itself."""
    await sim.config(batch_latency_s=0.2)
    batch = await sim.client.messages.batches.create(
        requests=[{"custom_id": "w", "params": params()}]  # type: ignore[typeddict-item]
    )
    await asyncio.sleep(0.3)
    assert (await sim.client.messages.batches.retrieve(batch.id)).processing_status == "ended"


def test_the_sim_command_flags_set_the_batch_behaviour() -> None:
    """`escalator sim --batch-latency --batch-fault --batch-limits`, in its own process: the
    batch ends after its latency with about the errored fraction, and the limits are set."""
    proc, url = sim_server.spawn(
        "--batch-latency", "0.3", "--batch-fault", "errored:0.5", "--batch-limits", "50:1000"
    )
    try:
        client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0, timeout=10)
        requests = [{"custom_id": f"p{i}", "params": params(f"p {i}")} for i in range(100)]
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
        deadline = 50
        while (batch := client.messages.batches.retrieve(batch.id)).ended_at is None:
            deadline -= 1
            assert deadline > 0, "the batch did not end"
            time.sleep(0.1)
        assert 30 <= batch.request_counts.errored <= 70
        config = client.get("/_sim/config", cast_to=object)
        assert config["batch_limits"] == [50, 1000]  # type: ignore[index]
        client.close()
    finally:
        sim_server.terminate(proc)
