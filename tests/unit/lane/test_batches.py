"""The lane's Message Batches API on the ``anthropic`` SDK (``lane/batches.py``:
``AnthropicBatches``), against the emulator's aiohttp application in this process (as
``tests/unit/dev/emulator/test_batches.py`` runs it): what the runner is given for
each result type, the list cut at ``since_ms`` with each batch's size, and API errors
translated as the real-time adapter translates them."""

from __future__ import annotations

import time

import pytest

from escalator.errors import ModelRejected, ModelUnavailable
from escalator.lane.batches import AnthropicBatches, BatchGone
from tests.unit.dev.emulator import test_batches as emulated
from tests.unit.dev.emulator.test_batches import HOUR, Sim, params
from tests.unit.lane.fakes import encoded

#: The emulator in this process, as ``tests/unit/dev/emulator/test_batches.py`` runs it.
sim = emulated.sim


async def test_an_ended_batch_gives_each_item_its_kind_and_an_answer_or_an_error_type(
    sim: Sim,
) -> None:
    api = AnthropicBatches(sim.client)
    batch_id = await api.create(
        encoded(
            [
                {"custom_id": "ok", "params": params()},
                {"custom_id": "no-model", "params": params(model="claude-nope-9")},
                {"custom_id": "fault", "params": params("boom [[sim:500]]")},
            ]
        )
    )
    assert await api.ended(batch_id) is False
    await sim.advance(HOUR)
    assert await api.ended(batch_id) is True
    results = {r.custom_id: r async for r in api.results(batch_id)}
    assert {k: (r.kind, r.error) for k, r in results.items()} == {
        "ok": ("succeeded", None),
        "no-model": ("errored", "not_found_error"),
        "fault": ("errored", "api_error"),
    }
    assert results["ok"].message.usage.service_tier == "batch"
    assert results["no-model"].message is None


async def test_an_item_neither_answered_nor_errored_keeps_the_api_s_result_type(
    sim: Sim,
) -> None:
    api = AnthropicBatches(sim.client)
    await sim.config(batch_faults={"expired": 1.0})
    expired = await api.create(encoded([{"custom_id": "late", "params": params()}]))
    await sim.config(batch_faults={})
    canceled = await api.create(encoded([{"custom_id": "stopped", "params": params()}]))
    await sim.client.messages.batches.cancel(canceled)
    await sim.advance(25 * HOUR)
    got = [(r.custom_id, r.kind, r.message, r.error) async for r in api.results(expired)]
    got += [(r.custom_id, r.kind, r.message, r.error) async for r in api.results(canceled)]
    assert got == [("late", "expired", None, None), ("stopped", "canceled", None, None)]


async def test_the_list_is_newest_first_down_to_since_with_each_batch_s_size(
    sim: Sim,
) -> None:
    api = AnthropicBatches(sim.client)
    old = await api.create(encoded([{"custom_id": "o", "params": params()}]))
    await sim.advance(HOUR)  # the old batch ends
    listed = await api.listed(0)
    assert [(b.batch_id, b.ended, b.size) for b in listed] == [(old, True, 1)]
    since_ms = listed[0].created_ms + 1
    new = await api.create(encoded([{"custom_id": f"n{i}", "params": params()} for i in range(3)]))
    listed = await api.listed(since_ms)
    assert [(b.batch_id, b.ended, b.size) for b in listed] == [(new, False, 3)]
    assert listed[0].created_ms >= since_ms
    assert abs(listed[0].created_ms - time.time() * 1000) < 3600_000


async def test_api_errors_are_translated_a_refused_batch_is_rejected_a_limit_is_unavailable(
    sim: Sim,
) -> None:
    api = AnthropicBatches(sim.client)
    with pytest.raises(ModelRejected):
        await api.create(encoded([{"custom_id": "a", "params": {"stream": True}}]))
    await sim.config(batch_limits="1:100000")
    await api.listed(0)
    with pytest.raises(ModelUnavailable):
        await api.listed(0)


async def test_a_batch_the_api_does_not_know_is_gone_not_an_account_hold(sim: Sim) -> None:
    """A 404 on a batch's endpoints is about that batch (deleted, its results past their 29
    days, another workspace's), not a retired model: BatchGone, which the runner answers in
    real time, where the real-time adapter's reading (ApiBlocked) would hold the lane."""
    api = AnthropicBatches(sim.client)
    with pytest.raises(BatchGone, match="msgbatch_nope"):
        await api.ended("msgbatch_nope")
    batch_id = await api.create(encoded([{"custom_id": "ok", "params": params()}]))
    await sim.advance(30 * 24 * HOUR)
    assert await api.ended(batch_id) is True
    with pytest.raises(BatchGone, match=batch_id):
        [r async for r in api.results(batch_id)]
