"""The lane's batches in flight (lane/runner.py) against fakes of the Batches API and the
state topic: one batch per cut, recorded before and after create; results back to the waiting
records; a restart resumes the same batch; a refused batch sends its members to real time.

Across a rebalance, two lane workers share one fake state topic and one fake Batches API: the
old owner's intent write or create call is still under way when its partition moves, and no
member is created in two batches (counted per custom id at the API). Also: an intent whose
create never happened is still closed and resubmitted, once it is older than the grace that
covers a create in flight."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
import weakref
from collections import Counter
from typing import Any

import anthropic
import pytest
from aiokafka.errors import KafkaConnectionError

from escalator.contract import messages as messages_module
from escalator.errors import EscalatorError, ModelUnavailable
from escalator.lane import runner as runner_module
from escalator.lane.batches import AnthropicBatches, ItemResult
from escalator.lane.deadlines import CompletionTimes
from escalator.lane.limits import PacedBatches
from escalator.lane.runner import BatchRunner
from escalator.lane.state import BatchState, NotAState, open_batches
from tests.unit.lane.fakes import FakeBatches, FakeState, encoded

PARAMS = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}


def succeeded(cid: str, params: dict[str, Any]) -> ItemResult:
    return ItemResult(cid, "succeeded", message=f"answer-{cid}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def runner(api: FakeBatches, state: FakeState, clock: Clock, **kw: Any) -> BatchRunner:
    # The loop polls only when a test says so (tick): poll_s is long.
    return BatchRunner(api, state, max_age_s=60.0, poll_s=3600.0, clock=clock, **kw)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def failed_then_adopted(
    r: BatchRunner, api: FakeBatches, offset: int, error: type[Exception]
) -> None:
    """The record at ``offset`` joins alone; the round that creates its batch fails with
    ``error`` although the API created it; the next round creates none and the record waits;
    once the batch has ended a round adopts it and the next collects the answer."""
    wait = asyncio.create_task(r.join("m", 0, offset, PARAMS))
    await settle()
    with pytest.raises(error):
        await r.tick()
    await r.tick()
    assert len(api.created) == 1 and not wait.done()
    api.finish("b1")
    await r.tick()  # adopted
    await r.tick()  # polled and collected
    assert (await asyncio.wait_for(wait, 1)).message == f"answer-p0o{offset}"
    assert len(api.created) == 1


async def test_members_share_one_batch_recorded_before_and_after_create() -> None:
    """Three records join one batch, cut by age: one create with their custom ids and the same
    bodies; the state topic gets the intent (no id) then the id under one key; each record gets
    its own result when the batch ends; the tombstone follows once all three are committed."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with runner(api, state, clock) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (3, 4, 5)]
        await settle()
        await r.tick()
        assert api.created == [] and r.waiting() == 3  # not due yet
        clock.now += 60
        await r.tick()
        assert [[q["custom_id"] for q in b] for b in api.created] == [["p0o3", "p0o4", "p0o5"]]
        assert all(q["params"] == PARAMS for q in api.created[0])
        intent, submitted = (BatchState.from_value(v or b"") for _, v in state.records)
        assert intent.batch_id is None and submitted.batch_id == "b1"
        assert state.records[0][0] == state.records[1][0] == intent.key
        await r.tick()
        assert not any(w.done() for w in waits)
        api.finish("b1")
        await r.tick()
        results = await asyncio.gather(*waits)
        assert [x.message for x in results] == ["answer-p0o3", "answer-p0o4", "answer-p0o5"]
        for o in (3, 4, 5):
            r.delivered(0, o)
        state.offsets[0] = 5
        await r.tick()
        assert open_batches(state.records)  # p0o5 delivered, not committed: still open
        state.offsets[0] = 6
        await r.tick()
        assert open_batches(state.records) == {} and state.records[-1] == (intent.key, None)


class Params(dict[str, Any]):
    """Params a weak reference can follow (a plain dict cannot be weakly referenced)."""


async def test_a_waiting_member_is_held_encoded_not_as_its_params() -> None:
    """The lane holds up to 10,000 waiting requests; their params hold each text escaped, in
    a Python string (up to 4 bytes a character). The runner keeps each member's entry as
    JSON bytes only: nothing keeps the params while the record waits, and the create gets the
    same entry, byte for byte (docs/OPERATIONS.md, "The batch lane's memory")."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    text = "a" * 20_000
    long = {**PARAMS, "messages": [{"role": "user", "content": text}]}
    async with runner(api, state, clock) as r:
        params = Params(long)
        seen = weakref.ref(params)
        tracemalloc.start()
        try:
            wait = asyncio.create_task(r.join("m", 0, 3, params))
            del params
            await settle()
            gc.collect()
            held = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, runner_module.__file__),
                 tracemalloc.Filter(True, messages_module.__file__)]  # text_json's copy
            )  # fmt: skip
        finally:
            tracemalloc.stop()
        assert r.waiting() == 1 and not wait.done()
        assert seen() is None, "the params are not kept while the member waits"
        # orjson's bytes keep about ten times a long text's size reserved for escaping.
        size = sum(stat.size for stat in held.statistics("filename"))
        assert size < 2 * len(text), f"the entry is held at its own size, not {size} bytes"
        clock.now += 60
        await r.tick()
        assert api.created == [[{"custom_id": "p0o3", "params": long}]]
        api.finish("b1")
        await r.tick()
        assert (await asyncio.wait_for(wait, 1)).message == "answer-p0o3"


async def test_a_restarted_runner_polls_the_same_batch_and_creates_none() -> None:
    """A worker killed after submission: the next one reads the batch from the state topic,
    and the re-delivered records wait for that batch (no second create); a member that comes
    after the batch ended gets the kept result."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with runner(api, state, clock, max_requests=2) as first:
        lost = [asyncio.create_task(first.join("m", 1, o, PARAMS)) for o in (7, 8)]
        await settle()
        await first.tick()
        assert len(api.created) == 1
    for task in lost:
        task.cancel()
    async with runner(api, state, clock) as second:
        again = asyncio.create_task(second.join("m", 1, 7, PARAMS))
        await settle()
        clock.now += 3600
        await second.tick()
        assert len(api.created) == 1 and not again.done()
        api.finish("b1")
        await second.tick()
        assert (await again).message == "answer-p1o7"
        late = await asyncio.wait_for(second.join("m", 1, 8, PARAMS), 1)
        assert late.message == "answer-p1o8"
        assert len(api.created) == 1 and second.created == 0


async def test_a_batch_refused_whole_sends_every_member_to_real_time() -> None:
    """A create refused as a whole (a 400): each member's result is errored (the handler then
    answers it in real time) and the intent is closed."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    api.reject = True
    async with runner(api, state, clock, max_requests=2) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2)]
        await settle()
        await r.tick()
        assert [(x.kind, x.error) for x in await asyncio.gather(*waits)] == [
            ("errored", "batch_refused")
        ] * 2
    assert open_batches(state.records) == {}


async def test_revoked_partitions_leave_the_open_batch_and_their_waits_end() -> None:
    """On revocation the records of the revoked partitions leave the batch being assembled
    (the next owner batches them) and their waits are cancelled; the others stay."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with runner(api, state, clock) as r:
        gone = asyncio.create_task(r.join("m", 0, 1, PARAMS))
        kept = asyncio.create_task(r.join("m", 1, 1, PARAMS))
        await settle()
        r.give_up({0})
        await settle()
        assert gone.cancelled() and not kept.done()
        clock.now += 60
        await r.tick()
        assert [[q["custom_id"] for q in b] for b in api.created] == [["p1o1"]]
        kept.cancel()


async def test_a_member_the_results_do_not_name_is_treated_as_expired() -> None:
    """Every member gets a result: one missing from the results file is expired (real time)."""
    api = FakeBatches(lambda cid, p: ItemResult("other", "succeeded", message="x"))
    state, clock = FakeState(), Clock()
    async with runner(api, state, clock, max_requests=1) as r:
        wait = asyncio.create_task(r.join("m", 0, 1, PARAMS))
        await settle()
        await r.tick()
        api.finish("b1")
        await r.tick()
        assert (await wait).kind == "expired"


async def test_a_batch_the_api_no_longer_knows_sends_its_members_to_real_time() -> None:
    """A batch gone from the API (404: deleted, another workspace's): its members' results are
    errored (the handler answers them in real time), the round goes on to the next batch, and
    the next rounds do not ask for it again. Before, the round failed on it every time and no
    batch polled after it was ever collected."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with runner(api, state, clock, max_requests=1) as r:
        lost = asyncio.create_task(r.join("m", 0, 1, PARAMS))
        await settle()
        await r.tick()
        kept = asyncio.create_task(r.join("m", 0, 2, PARAMS))
        await settle()
        await r.tick()
        assert len(api.created) == 2
        api.gone.add("b1")
        api.finish("b2")
        await r.tick()
        assert ((await lost).kind, (await lost).error) == ("errored", "batch_gone")
        assert (await kept).message == "answer-p0o2"
        polls = api.polls
        await r.tick()
        assert api.polls == polls


async def answered_by_the_loop(r: BatchRunner, api: FakeBatches) -> None:
    """The record p0o1 joins; the runner's own loop (polling every few ms) creates its batch,
    once, and collects its answer once the batch has ended."""
    wait = asyncio.create_task(r.join("m", 0, 1, PARAMS))
    for _ in range(300):
        if api.created:
            break
        await asyncio.sleep(0.01)
    assert len(api.created) == 1
    api.finish("b1")
    assert (await asyncio.wait_for(wait, 5)).message == "answer-p0o1"


async def test_a_create_that_fails_is_tried_again_and_the_records_keep_waiting() -> None:
    """The API unavailable at create: the round fails, the batch stays cut, the next round
    creates it once; the loop survives and the records get their results."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    api.fail = ModelUnavailable("overloaded", kind="overloaded")
    async with BatchRunner(api, state, max_age_s=60, poll_s=0.01, clock=clock, max_requests=1) as r:
        await answered_by_the_loop(r, api)


@pytest.mark.parametrize(
    "error",
    [
        EscalatorError("topic 'lane-state' does not exist"),
        KafkaConnectionError("no broker"),
        OSError("connection reset"),
    ],
    ids=["escalator", "kafka", "os"],
)
async def test_a_state_read_that_fails_after_an_assignment_is_tried_again(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """The state topic cannot be read when partitions are assigned (its metadata missing, no
    broker): each failure is logged and the read tried again; once it succeeds the records
    join and get their results."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with BatchRunner(api, state, max_age_s=60, poll_s=0.01, clock=clock, max_requests=1) as r:
        state.read_fails = [error, error]
        r.refresh()
        await answered_by_the_loop(r, api)
    assert caplog.text.count("lane_state_read_failed") == 2


async def test_a_record_that_is_not_a_state_stops_the_lane_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A foreign record lands on the state topic and an assignment re-reads it: the lane cannot
    know which batches are open, so the record waiting and every later join raise the error
    (the lane's worker stops, the process exits) instead of waiting for ever; logged once."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with BatchRunner(api, state, max_age_s=60, poll_s=0.01, clock=clock, max_requests=2) as r:
        waiting = asyncio.create_task(r.join("m", 0, 1, PARAMS))
        await settle()
        state.records.append((b"stray", b"not json"))
        r.refresh()
        with pytest.raises(NotAState, match="not JSON"):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(NotAState):
            await asyncio.wait_for(r.join("m", 0, 2, PARAMS), 5)
    assert caplog.text.count("lane_failed") == 1


async def test_a_lane_failed_with_nothing_waiting_fails_the_next_join_after_more_assignments() -> (
    None
):
    """The foreign record fails a re-read while no record waits, and the next assignments'
    re-reads fail again: the next join still raises at once (it used to wait for ever for a
    read that never came)."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with BatchRunner(api, state, max_age_s=60, poll_s=0.01, clock=clock, max_requests=2) as r:
        state.records.append((b"stray", b"not json"))
        for _ in range(2):
            r.refresh()
            await settle()
        with pytest.raises(NotAState):
            await asyncio.wait_for(r.join("m", 0, 2, PARAMS), 5)


def kill_before_the_id(state: FakeState) -> None:
    """The state topic as a worker killed between create and writing the batch id leaves it:
    the intent only."""
    state.records = [
        (k, v) for k, v in state.records if BatchState.from_value(v or b"").batch_id is None
    ]


async def test_an_intent_whose_batch_was_created_is_adopted_not_billed_again() -> None:
    """Killed between create and the id's record: the next worker finds the intent, waits
    while a batch of its size is still running, then adopts the batch whose results name
    exactly its members (its id under the intent's key); no second create."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    async with runner(api, state, clock, max_requests=2) as first:
        lost = [asyncio.create_task(first.join("m", 2, o, PARAMS)) for o in (1, 2)]
        await settle()
        await first.tick()
    for task in lost:
        task.cancel()
    kill_before_the_id(state)
    (intent,) = open_batches(state.records).values()
    clock.now += 30
    async with runner(api, state, clock, max_requests=2) as second:
        again = [asyncio.create_task(second.join("m", 2, o, PARAMS)) for o in (1, 2)]
        await settle()
        await second.tick()
        assert len(api.created) == 1 and api.lists >= 1 and not any(t.done() for t in again)
        assert open_batches(state.records)[intent.key].batch_id is None  # b1 still running
        api.finish("b1")
        await second.tick()
        assert open_batches(state.records)[intent.key].batch_id == "b1"
        results = await asyncio.wait_for(asyncio.gather(*again), 1)
        assert [x.message for x in results] == ["answer-p2o1", "answer-p2o2"]
        for o in (1, 2):
            second.delivered(2, o)
        state.offsets[2] = 3
        await second.tick()
        assert open_batches(state.records) == {} and len(api.created) == 1


async def test_an_intent_no_batch_matches_is_closed_and_its_members_resubmitted() -> None:
    """An intent whose create never reached the API: a batch of the same size with other
    members (another worker's) is not it; the intent is closed and its members go into one new
    batch."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    other = [{"custom_id": f"p9o{o}", "params": PARAMS} for o in (1, 2)]
    await api.create(encoded(other))
    api.finish("b1")
    intent = BatchState("m", ("p3o1", "p3o2"), int(clock.now * 1000))
    await state.write(intent)
    clock.now += 1
    async with runner(api, state, clock) as r:
        waits = [asyncio.create_task(r.join("m", 3, o, PARAMS)) for o in (1, 2)]
        await settle()
        clock.now += 60
        await r.tick()
        assert [[q["custom_id"] for q in b] for b in api.created] == [
            ["p9o1", "p9o2"],
            ["p3o1", "p3o2"],
        ]
        assert (intent.key, None) in state.records
        assert [s.batch_id for s in open_batches(state.records).values()] == ["b2"]
        api.finish("b2")
        await r.tick()
        assert [x.message for x in await asyncio.gather(*waits)] == ["answer-p3o1", "answer-p3o2"]


async def test_a_create_that_failed_after_the_api_took_it_is_adopted() -> None:
    """A create that raised (a timeout) although the API created the batch: the intent is held
    and the next round adopts that batch once it ends; one create in all."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    api.fail_after = ModelUnavailable("timeout", kind="timeout")
    async with runner(api, state, clock, max_requests=1) as r:
        await failed_then_adopted(r, api, 4, ModelUnavailable)
        assert r.created == 0


async def test_the_gauges_show_waiting_requests_and_the_oldest_batch_in_flight() -> None:
    """Requests waiting, batches in flight and the oldest one's age since submission, and the
    completion time the rule assumes; all back to 0 once the batch has ended; each ended
    batch's time to results in the histogram."""
    from escalator.observability.metrics import Metrics

    metrics, clock = Metrics(), Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    async with runner(api, state, clock, max_requests=2, metrics=metrics) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2, 3)]
        await settle()
        await r.tick()  # p0o1 and p0o2 submitted; p0o3 in the open batch
        clock.now += 90
        r.gauges()
        assert value("escalator_lane_waiting") == 3
        assert value("escalator_lane_batches_in_flight") == 1
        assert value("escalator_lane_oldest_batch_age_seconds") == 90
        assert value("escalator_lane_expected_completion_seconds") == 3600
        api.finish("b1")
        await r.tick()  # b1 collected; p0o3, due by now, submitted as b2
        await settle()
        r.gauges()
        assert value("escalator_lane_batch_seconds_count") == 1
        assert value("escalator_lane_batch_seconds_sum") == 90
        assert value("escalator_lane_batch_seconds_bucket", le="60.0") == 0
        assert value("escalator_lane_batch_seconds_bucket", le="300.0") == 1
        assert value("escalator_lane_waiting") == 1
        assert value("escalator_lane_batches_in_flight") == 1
        assert value("escalator_lane_oldest_batch_age_seconds") == 0
        api.finish("b2")
        await r.tick()
        await settle()
        r.gauges()
        assert value("escalator_lane_waiting") == 0
        assert value("escalator_lane_batches_in_flight") == 0
        assert all(w.done() for w in waits)


async def test_a_batch_whose_id_could_not_be_recorded_is_adopted_not_created_again() -> None:
    """The create succeeded but the state topic refused the id's record: the round fails, and
    a later one adopts that batch (once it has ended) instead of creating another."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    write = state.write
    calls = 0

    async def flaky(s: BatchState) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the intent passes, the id's record fails
            raise OSError("broker away")
        await write(s)

    state.write = flaky  # type: ignore[method-assign]
    async with runner(api, state, clock, max_requests=1) as r:
        await failed_then_adopted(r, api, 5, OSError)
        assert [s.batch_id for s in open_batches(state.records).values()] == ["b1"]


async def test_a_batch_partly_committed_before_a_crash_is_closed_by_the_next_worker() -> None:
    """A worker answers and commits one member of an ended batch, then dies: that member never
    comes again. The next worker answers the other from the kept results and, once the group
    has committed both, closes the batch (it stayed open for ever when a close waited for every
    member to be delivered in one process)."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with runner(api, state, clock, max_requests=2) as first:
        waits = [asyncio.create_task(first.join("m", 0, o, PARAMS)) for o in (1, 2)]
        await settle()
        await first.tick()
        api.finish("b1")
        await first.tick()
        await asyncio.gather(*waits)
        first.delivered(0, 1)
        state.offsets[0] = 2  # p0o1 committed; p0o2 answered, not delivered: the crash
    async with runner(api, state, clock) as second:
        again = await asyncio.wait_for(second.join("m", 0, 2, PARAMS), 1)
        assert again.message == "answer-p0o2"
        second.delivered(0, 2)
        await second.tick()
        assert open_batches(state.records)  # p0o2 not committed yet
        state.offsets[0] = 3
        await second.tick()
        assert open_batches(state.records) == {} and len(api.created) == 1


async def test_a_batch_split_by_a_rebalance_is_closed_once_both_workers_committed() -> None:
    """A batch whose members' partitions went to two workers: each answers its own; the batch
    closes once the group has committed every member, not before."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with runner(api, state, clock, max_requests=2) as a:
        waits = [asyncio.create_task(a.join("m", p, 7, PARAMS)) for p in (0, 1)]
        await settle()
        await a.tick()
        a.give_up({1})
        await settle()
        assert waits[1].cancelled()
        async with runner(api, state, clock) as b:
            moved = asyncio.create_task(b.join("m", 1, 7, PARAMS))
            api.finish("b1")
            await a.tick()
            await b.tick()
            await asyncio.wait_for(asyncio.gather(waits[0], moved), 1)
            a.delivered(0, 7)
            b.delivered(1, 7)
            state.offsets[0] = 8
            await a.tick()
            await b.tick()
            assert open_batches(state.records)  # p1o7 not committed yet
            state.offsets[1] = 8
            await a.tick()
            assert open_batches(state.records) == {} and len(api.created) == 1
            await b.tick()  # the other worker lets it go too (a second tombstone at most)
            assert open_batches(state.records) == {}


def created_ids(api: FakeBatches) -> list[list[str]]:
    return [[q["custom_id"] for q in b] for b in api.created]


async def messages(waits: list[asyncio.Task[ItemResult | None]]) -> list[Any]:
    """The batch answers the waiting records get (each one has one)."""
    results = await asyncio.wait_for(asyncio.gather(*waits), 1)
    assert None not in results
    return [r.message for r in results if r is not None]


async def test_a_queue_limit_holds_the_next_batch_until_one_ends() -> None:
    """Queue limit 4, batches of 2: two batches go (4 requests in the queue), the third waits,
    counted once as held, while neither has ended; once one ends, it goes. The gauge shows the
    queue as counted, the limit beside it."""
    from escalator.observability.metrics import Metrics

    metrics, clock = Metrics(), Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()

    def value(name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    async with runner(api, state, clock, max_requests=2, queue_limit=4, metrics=metrics) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in range(6)]
        await settle()
        await r.tick()
        await r.tick()
        r.gauges()
        assert created_ids(api) == [["p0o0", "p0o1"], ["p0o2", "p0o3"]]
        assert r.queued() == 4 and value("escalator_lane_queued_requests") == 4
        assert value("escalator_lane_queue_limit") == 4
        assert value("escalator_lane_queue_holds_total") == 1
        api.finish("b2")
        await r.tick()  # b2 collected: 2 in the queue, room for the held batch
        await r.tick()
        r.gauges()
        assert created_ids(api)[2:] == [["p0o4", "p0o5"]]
        assert r.queued() == 4 and value("escalator_lane_queue_holds_total") == 1
        api.finish("b1")
        api.finish("b3")
        await r.tick()
        assert await messages(waits) == [f"answer-p0o{o}" for o in range(6)]


async def test_the_queue_counts_other_workers_batches_read_on_the_state_topic() -> None:
    """A second worker reads the first one's running batches on the state topic: they fill
    its queue limit, so its own batch waits for one of them to end (seen when it polls it)."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    async with runner(api, state, clock, max_requests=2) as first:
        mine = [asyncio.create_task(first.join("m", 0, o, PARAMS)) for o in range(4)]
        await settle()
        await first.tick()
        assert len(api.created) == 2
        async with runner(api, state, clock, max_requests=2, queue_limit=4) as second:
            assert second.queued() == 4
            theirs = [asyncio.create_task(second.join("m", 1, o, PARAMS)) for o in range(2)]
            await settle()
            await second.tick()
            assert len(api.created) == 2
            api.finish("b1")
            await second.tick()  # b1 seen ended
            await second.tick()
            assert created_ids(api)[2:] == [["p1o0", "p1o1"]]
            for task in [*mine, *theirs]:
                task.cancel()


async def test_a_held_member_whose_deadline_cannot_wait_goes_real_time_in_time() -> None:
    """The queue is full; of the two members of the held batch, the one whose deadline less
    the 10 s margin comes before a batch sent now would end (60 s) is answered in real time at
    once (``join`` gives None: the handler's deadline fallback); the other waits and is sent
    alone once the queue has room."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with runner(
        api, state, clock, max_requests=2, queue_limit=2, fallback_s=10,
        times=CompletionTimes(60.0),
    ) as r:  # fmt: skip
        first = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2)]
        await settle()
        await r.tick()
        soon = int((clock.now + 60 + 10 - 1) * 1000)  # a second short of what a batch needs
        later = int((clock.now + 3600) * 1000)
        urgent = asyncio.create_task(r.join("m", 0, 3, PARAMS, soon))
        patient = asyncio.create_task(r.join("m", 0, 4, PARAMS, later))
        await settle()
        await r.tick()
        await settle()
        assert urgent.done() and urgent.result() is None and not patient.done()
        assert len(api.created) == 1
        r.withdraw(0, 3)  # as the handler does before answering it in real time
        api.finish("b1")
        await r.tick()
        await r.tick()
        assert created_ids(api)[1:] == [["p0o4"]]
        api.finish("b2")
        await r.tick()
        assert await messages([patient]) == ["answer-p0o4"]
        for task in first:
            await task


async def test_a_429_on_create_holds_the_batch_first_in_line_and_fails_no_member() -> None:
    """The API says 429 to create: nothing was created, so the intent is closed (nothing to
    adopt) and the batch waits, first in line; the round fails, no member does; the next
    round creates it once and the members get their batch answers."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    api.fail = ModelUnavailable("rate limited (429)", kind="rate_limit", retry_after_s=1)
    async with runner(api, state, clock, max_requests=2) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2)]
        await settle()
        try:
            await r.tick()
        except ModelUnavailable:
            pass
        else:
            raise AssertionError("the round should fail")
        assert api.created == [] and open_batches(state.records) == {}
        assert not any(w.done() for w in waits) and api.lists == 0
        await r.tick()
        assert created_ids(api) == [["p0o1", "p0o2"]]
        api.finish("b1")
        await r.tick()
        assert await messages(waits) == ["answer-p0o1", "answer-p0o2"]


async def test_revoked_members_of_a_held_batch_leave_it() -> None:
    """A batch held back by the queue limit loses the members of revoked partitions (the next
    owner batches them: never sent twice) and of withdrawn records."""
    api, state, clock = FakeBatches(succeeded), FakeState(), Clock()
    async with runner(api, state, clock, max_requests=3, queue_limit=3) as r:
        first = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2, 3)]
        held = [asyncio.create_task(r.join("m", p, 9, PARAMS)) for p in (0, 1, 2)]
        await settle()
        await r.tick()
        assert len(api.created) == 1
        r.give_up({1})
        r.withdraw(2, 9)
        api.finish("b1")
        await r.tick()
        await r.tick()
        assert created_ids(api)[1:] == [["p0o9"]]
        for task in [*first, *held]:
            task.cancel()


class GatedBatches(FakeBatches):
    """FakeBatches whose create waits for ``gate``, then raises ``fail`` if set."""

    def __init__(self) -> None:
        super().__init__(succeeded)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def create(self, entries: list[bytes]) -> str:
        self.entered.set()
        await self.gate.wait()
        return await super().create(entries)


async def test_members_revoked_or_withdrawn_while_a_429_was_coming_do_not_wait_again() -> None:
    """While a create that will be refused with a 429 is under way, one member's partition is
    revoked and another member is withdrawn: the batch waits again without them (the next
    owner batches the revoked one; never sent twice), and the next round sends the rest."""
    api, state, clock = GatedBatches(), FakeState(), Clock()
    api.fail = ModelUnavailable("rate limited (429)", kind="rate_limit")
    async with runner(api, state, clock, max_requests=3) as r:
        waits = [asyncio.create_task(r.join("m", p, 5, PARAMS)) for p in (0, 1, 2)]
        await settle()
        round_ = asyncio.create_task(r.tick())
        await asyncio.wait_for(api.entered.wait(), 1)
        r.give_up({1})
        r.withdraw(2, 5)
        api.gate.set()
        try:
            await round_
        except ModelUnavailable:
            pass
        else:
            raise AssertionError("the round should fail")
        assert api.created == [] and open_batches(state.records) == {}
        await r.tick()
        assert created_ids(api) == [["p0o5"]]
        api.finish("b1")
        await r.tick()
        assert await messages(waits[:1]) == ["answer-p0o5"]


# -- across a rebalance --------------------------------------------------------------------------
class SlowState(FakeState):
    """The state topic, whose next intent write (or, with ``ids``, the next write of a batch
    id) waits for ``gate`` once ``slow`` is set (the broker has not acknowledged it yet: a
    reader does not see it)."""

    def __init__(self, *, ids: bool = False) -> None:
        super().__init__()
        self.ids = ids
        self.slow = False
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def write(self, state: BatchState) -> None:
        if self.slow and (state.batch_id is not None) == self.ids:
            self.slow = False
            self.entered.set()
            await self.gate.wait()
        await super().write(state)


async def held_in_write(r: BatchRunner, state: SlowState) -> asyncio.Task[None]:
    """A round of ``r`` under way, held in the state write ``state`` gates."""
    state.slow = True
    round_ = asyncio.create_task(r.tick())
    await asyncio.wait_for(state.entered.wait(), 1)
    return round_


class SlowBatches(FakeBatches):
    """The Batches API, whose next create waits for ``gate`` once ``slow`` is set (the batch
    exists only once it is let through)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(succeeded, clock)
        self.slow = False
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def create(self, entries: list[bytes]) -> str:
        if self.slow:
            self.slow = False
            self.entered.set()
            await self.gate.wait()
        return await super().create(entries)


def creates_per_member(api: FakeBatches) -> Counter[str]:
    return Counter(q["custom_id"] for batch in api.created for q in batch)


def joins(r: BatchRunner, offsets: tuple[int, ...]) -> list[asyncio.Task[ItemResult | None]]:
    return [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in offsets]


async def closed_then_resubmitted(
    r: BatchRunner,
    api: FakeBatches,
    state: FakeState,
    key: bytes,
    waits: list[asyncio.Task[ItemResult | None]],
) -> None:
    """The next round closes the intent ``key`` (p0o1, p0o2) and creates them in one batch,
    whose answers the waiting records get."""
    await r.tick()
    assert (key, None) in state.records
    assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
    api.finish("b1")
    await r.tick()
    assert await messages(waits) == ["answer-p0o1", "answer-p0o2"]


async def test_an_intent_still_being_written_at_revocation_is_not_created_twice() -> None:
    """Race A: the old owner's intent write is not acknowledged when its partition is revoked,
    so the new owner's state read does not see it and batches the same records. The old owner
    creates nothing for members revoked before its create call (its intent is closed): every
    member is created in exactly one batch, the new owner's, and answered from it."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), SlowState()
    async with runner(api, state, clock, max_requests=2) as old:
        lost = joins(old, (1, 2))
        await settle()
        sending = await held_in_write(old, state)
        old.give_up({0})  # the rebalance: the intent write is still under way
        async with runner(api, state, clock, max_requests=2) as new:
            new.refresh()  # the engine's assignment
            moved = joins(new, (1, 2))
            await settle()
            await new.tick()
            state.gate.set()  # the old owner's intent lands after the new owner's read
            await sending
            await settle()
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
            await new.tick()
            await old.tick()
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
            api.finish("b1")
            await new.tick()
            assert await messages(moved) == ["answer-p0o1", "answer-p0o2"]
    assert all(t.cancelled() for t in lost)


async def test_an_intent_landing_before_the_new_owners_intent_is_waited_for() -> None:
    """Race A, later: the old owner's intent lands after the new owner's state read (on its
    assignment) but before the new owner writes an intent of its own: the new owner reads the
    state topic again first, finds the members in that intent and leaves them out of its own
    batch. Only one batch ever holds them."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), SlowState()
    async with runner(api, state, clock, max_requests=2) as old:
        lost = joins(old, (1, 2))
        await settle()
        sending = await held_in_write(old, state)
        async with runner(api, state, clock, max_requests=2) as new:
            new.refresh()
            moved = joins(new, (1, 2))
            await settle()
            state.gate.set()  # lands before the new owner's intent; the old owner still owns p0
            await sending
            await new.tick()
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
            assert len(api.created) == 1
            old.give_up({0})
            api.finish("b1")
            await new.tick()  # b1 listed, ended, its results name the intent's members
            await new.tick()
            assert await messages(moved) == ["answer-p0o1", "answer-p0o2"]
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
    assert all(t.cancelled() for t in lost)


async def test_an_intent_whose_create_is_in_flight_is_not_closed_by_the_new_owner() -> None:
    """Race B: the new owner holds the old owner's intent while the old owner's create is
    still under way: the API lists no batch and none is running, yet the intent is younger
    than the grace, so it is not closed and its members not resubmitted. The create lands, the
    new owner adopts that batch once it has ended: one create per member."""
    clock = Clock()
    api, state = SlowBatches(clock), FakeState()
    async with runner(api, state, clock, max_requests=2) as old:
        lost = joins(old, (1, 2))
        await settle()
        api.slow = True
        sending = asyncio.create_task(old.tick())
        await asyncio.wait_for(api.entered.wait(), 1)
        old.give_up({0})  # the rebalance: the create is still under way
        async with runner(api, state, clock, max_requests=2) as new:
            new.refresh()
            moved = joins(new, (1, 2))
            await settle()
            clock.now += 5
            await new.tick()
            await new.tick()
            assert api.created == []
            api.gate.set()
            await sending
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
            clock.now += 3600
            await new.tick()  # b1 is running: waited for
            api.finish("b1")
            await new.tick()  # adopted
            await new.tick()  # collected
            assert await messages(moved) == ["answer-p0o1", "answer-p0o2"]
            assert creates_per_member(api) == {"p0o1": 1, "p0o2": 1}
    assert all(t.cancelled() for t in lost)


async def test_a_crashed_intent_is_closed_and_resubmitted_once_past_the_grace() -> None:
    """An intent whose worker died before its create: while younger than the grace it is
    neither closed nor resubmitted; past it, it is closed and its members go into one new
    batch."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    intent = BatchState("m", ("p0o1", "p0o2"), int(clock.now * 1000))
    await state.write(intent)
    async with runner(api, state, clock, max_requests=2) as r:
        waits = joins(r, (1, 2))
        await settle()
        clock.now += r.adopt_grace_s - 1
        await r.tick()
        assert api.created == [] and intent.key in open_batches(state.records)
        clock.now += 2
        await closed_then_resubmitted(r, api, state, intent.key, waits)


async def test_a_member_of_a_young_intent_that_cannot_wait_goes_real_time_at_once() -> None:
    """A member held for a young intent whose deadline, less the fallback margin, comes before
    a batch sent after the grace would end is answered in real time now (``join`` gives None);
    one with time to spare waits."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    await state.write(BatchState("m", ("p0o1", "p0o2"), int(clock.now * 1000)))
    async with runner(
        api, state, clock, max_requests=2, fallback_s=10, times=CompletionTimes(60.0)
    ) as r:
        soon = int((clock.now + r.adopt_grace_s + 60 + 10 - 1) * 1000)
        later = int((clock.now + 3600) * 1000)
        urgent = asyncio.create_task(r.join("m", 0, 1, PARAMS, soon))
        patient = asyncio.create_task(r.join("m", 0, 2, PARAMS, later))
        await settle()
        await r.tick()
        await settle()
        assert urgent.done() and urgent.result() is None and not patient.done()
        r.withdraw(0, 1)
        clock.now += r.adopt_grace_s
        await r.tick()
        assert creates_per_member(api) == {"p0o2": 1}
        api.finish("b1")
        await r.tick()
        assert await messages([patient]) == ["answer-p0o2"]


async def test_a_create_longer_than_its_timeout_is_given_up_and_its_intent_held() -> None:
    """A create still under way ``create_timeout_s`` after its intent is given up (so it ends
    within the grace another worker gives the intent): the round fails, the intent is held,
    not closed, until the grace has passed; then the members go into one new batch."""
    clock = Clock()
    api, state = SlowBatches(clock), FakeState()
    api.slow = True  # never let through: that create never reaches the API
    async with runner(api, state, clock, max_requests=2, create_timeout_s=0.05) as r:
        assert r.adopt_grace_s == 0.05 + 30
        waits = joins(r, (1, 2))
        await settle()
        try:
            await asyncio.wait_for(r.tick(), 1)
        except ModelUnavailable as exc:
            assert exc.kind == "timeout"
        else:
            raise AssertionError("the create should have been given up")
        (intent,) = open_batches(state.records).values()
        assert intent.batch_id is None and api.created == []
        await r.tick()
        assert api.created == [] and open_batches(state.records) == {intent.key: intent}
        clock.now += r.adopt_grace_s + 1
        await closed_then_resubmitted(r, api, state, intent.key, waits)


async def test_the_grace_follows_the_api_clients_timeout() -> None:
    """The create's timeout is the lane's API client's (a float, or the longest phase of a
    Timeout), 30 s when the API states none (a fake); the grace adds the margin."""
    client = anthropic.AsyncAnthropic(api_key="k", base_url="http://127.0.0.1:9", timeout=12.0)
    phased = anthropic.AsyncAnthropic(
        api_key="k", base_url="http://127.0.0.1:9", timeout=anthropic.Timeout(5.0, read=90.0)
    )
    assert AnthropicBatches(client).timeout_s == 12.0
    assert AnthropicBatches(phased).timeout_s == 90.0
    state = FakeState()
    by_client = BatchRunner(AnthropicBatches(client), state, max_age_s=60)
    assert (by_client.create_timeout_s, by_client.adopt_grace_s) == (12.0, 42.0)
    assert BatchRunner(FakeBatches(succeeded), state, max_age_s=60).adopt_grace_s == 60.0
    await client.close()
    await phased.close()


async def test_a_read_between_the_create_and_its_id_never_closes_the_running_batch() -> None:
    """An assignment's state read lands after this worker's create and before the write of
    its id: the read sees the intent and holds it. Once the batch is tracked it is no intent
    any more, so no round closes it (which would tombstone the live batch's record: after a
    restart the next owner would not see it and would create its members again)."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), SlowState(ids=True)
    async with runner(api, state, clock, max_requests=2) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2)]
        await settle()
        submitting = await held_in_write(r, state)
        r.refresh()  # other partitions assigned: the state topic is read now
        await settle()
        state.gate.set()
        await submitting
        clock.now += r.adopt_grace_s + 1
        await r.tick()
        assert len(open_batches(state.records)) == 1, "the running batch's record was closed"
        assert r.queued() == 2  # counted once
        for w in waits:
            w.cancel()


async def test_a_held_pacer_is_waited_out_before_the_intent_not_inside_the_creates_timeout() -> (
    None
):
    """A 429's hold longer than the create's timeout: the round waits for the pacer, then
    writes the intent and creates the batch (before, the create was given up while it still
    waited for the pacer, and its members waited out the grace for a batch never sent)."""
    clock = Clock()
    api, state = FakeBatches(succeeded, clock), FakeState()
    async with runner(api, state, clock, max_requests=2, rpm=60_000, create_timeout_s=0.2) as r:
        waits = [asyncio.create_task(r.join("m", 0, o, PARAMS)) for o in (1, 2)]
        await settle()
        assert isinstance(r._api, PacedBatches)
        r._api.pacer.hold(0.5)  # a 429's retry-after, seen on another endpoint
        with contextlib.suppress(ModelUnavailable):  # before the fix: the create gave up
            await r.tick()
        assert len(api.created) == 1
        assert not r._intents
        assert len(open_batches(state.records)) == 1
        for w in waits:
            w.cancel()
