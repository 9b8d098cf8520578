"""The review queues (``review/handler.py``): leases, decisions and what they publish, the
commit watermark, duplicates and recovery, bad items, revocations, a broker that does not
acknowledge, the buffer.

Each test runs the handler inside a console on fakes (``running`` in ``test_assemble.py``):
the engine's real worker and at-least-once delivery against fakes of the consumer and
producer.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from tests.unit.review.test_assemble import TOPICS, TP, Rec, eventually, item, running


async def test_two_reviewers_get_different_items_and_keep_their_own() -> None:
    """Leases: alice and bob never share an item; asking again gives the same one."""
    async with running([item("a"), item("b"), item("c")]) as c:
        q = c.q
        a, b = q.lease("review", "alice"), q.lease("review", "bob")
        assert a is not None and b is not None
        assert a.item.review_id != b.item.review_id
        assert q.lease("review", "alice") == a
        assert [s.leased for s in q.stats()] == [2, 0] and q.stats()[0].depth == 3


async def test_an_expired_lease_returns_the_item_and_a_late_decision_is_lost_if_taken() -> None:
    """After the lease time the item is free again; once bob holds it, alice's decision is
    refused as lost and bob's counts."""
    async with running([item("a")], lease_s=10) as c:
        a = c.q.lease("review", "alice")
        assert a is not None
        c.clock.now += 11
        b = c.q.lease("review", "bob")
        assert b is not None and b.item == a.item
        assert await c.q.decide(a.id, "alice", "safe", None) == "lost"
        assert await c.q.decide(b.id, "bob", "unsafe", None) == "done"
        assert 'escalator_review_leases_expired_total{queue="review"} 1.0' in (
            c.metrics.exposition().decode()
        )


async def test_an_expired_lease_nobody_took_still_decides() -> None:
    """A reviewer who was slow but not overtaken still has their decision counted."""
    async with running([item("a")], lease_s=10) as c:
        a = c.q.lease("review", "alice")
        assert a is not None
        c.clock.now += 11
        await asyncio.sleep(0.1)  # the console's ticks expire the lease meanwhile
        assert c.q.stats()[0].leased == 0
        assert await c.q.decide(a.id, "alice", "safe", "slow") == "done"
        assert len(c.producer.sent) == 2


async def test_the_commit_never_passes_an_undecided_item() -> None:
    """Deciding offset 1 first commits nothing past 0; deciding 0 then commits 2."""
    async with running([item("a", 1), item("b", 2)]) as c:
        first = c.q.lease("review", "alice")
        second = c.q.lease("review", "bob")
        assert first is not None and second is not None
        assert first.item.request.id == "a"  # the oldest first
        assert await c.q.decide(second.id, "bob", "safe", None) == "done"
        await asyncio.sleep(0.1)
        assert c.consumer.committed in (None, 0)
        assert await c.q.decide(first.id, "alice", "safe", None) == "done"
        await eventually(lambda: c.consumer.committed == 2)
        assert c.consumer.committed == 2


async def test_a_decision_publishes_a_result_and_a_human_decision_then_commits() -> None:
    """The reviews queue: one result with the reviewer, one human decision; "neither" is a
    null label. The result carries the item's key and propagated headers."""
    async with running([item("a")]) as c:
        lease = c.q.lease("review", "alice")
        assert lease is not None
        assert await c.q.decide(lease.id, "alice", None, "none fit") == "done"
        assert [t for t, _ in c.producer.sent] == [TOPICS.results, TOPICS.decisions]
        assert c.producer.keys == [b"request-key", b"request-key"]
        assert c.producer.headers[TOPICS.results] == [("traceparent", b"00-abc-01")]
        result = orjson.loads(next(v for t, v in c.producer.sent if t == TOPICS.results))
        assert (result["label"], result["reviewer"], result["tier"]) == (None, "alice", "human")
        await eventually(lambda: c.consumer.committed == 1)
        assert c.consumer.committed == 1


async def test_an_adjudication_publishes_only_a_human_decision() -> None:
    """The adjudications queue is measurement: a decision record, no result."""
    rec = Rec(0, item("j", queue="adjudication"), topic=TOPICS.adjudications)
    async with running([]) as c:
        c.consumers[TOPICS.adjudications].pending = [rec]
        await eventually(lambda: c.q.lease("adjudication", "alice") is not None)
        lease = c.q.lease("adjudication", "alice")
        assert lease is not None
        assert await c.q.decide(lease.id, "alice", "safe", None) == "done"
        assert [t for t, _ in c.producer.sent] == [TOPICS.decisions]
        await eventually(lambda: c.consumers[TOPICS.adjudications].committed == 1)
        assert c.consumers[TOPICS.adjudications].committed == 1


async def test_a_repeated_item_and_a_repeated_decision_count_once() -> None:
    """The same request twice (a duplicate item): the second is done at once; deciding the
    same lease twice gives duplicate and publishes nothing more."""
    async with running([item("a"), item("b")]) as c:
        lease = c.q.lease("review", "alice")
        assert lease is not None
        assert await c.q.decide(lease.id, "alice", "safe", None) == "done"
        assert await c.q.decide(lease.id, "alice", "safe", None) in ("duplicate", "lost")
        assert len(c.producer.sent) == 2
        c.consumer.pending = [Rec(2, item("a"))]
        await eventually(lambda: c.consumer.committed == 1 and not c.consumer.pending)
        await asyncio.sleep(0.05)
        assert c.q.stats()[0].depth == 1  # only b waits
        assert 'escalator_review_duplicates_total{queue="review"} 1.0' in (
            c.metrics.exposition().decode()
        )


async def test_items_decided_before_a_restart_are_recognised_and_committed() -> None:
    """Recovery: review ids found in the decisions log are done before anything is shown."""
    async with running([item("a"), item("b"), item("c")], decided={"review:a"}) as c:
        assert c.q.stats()[0].depth == 2
        lease = c.q.lease("review", "alice")
        assert lease is not None and lease.item.request.id == "b"
        await eventually(lambda: c.consumer.committed == 1)
        assert c.consumer.committed == 1
        assert c.producer.sent == [], "a recognised item publishes nothing"


async def test_a_bad_record_is_dead_lettered_and_passed() -> None:
    """Not a review item: a dead letter in the tiers' shape; the commit moves past it."""
    async with running([b"not json", item("a")]) as c:
        assert [t for t, _ in c.producer.sent] == [TOPICS.dead_letter]
        headers = dict(c.producer.headers[TOPICS.dead_letter])
        assert headers["x-escalator-tier"] == b"review"
        assert headers["x-escalator-source-offset"] == b"0"
        assert headers["traceparent"] == b"00-abc-01"
        lease = c.q.lease("review", "alice")
        assert lease is not None
        assert await c.q.decide(lease.id, "alice", "safe", None) == "done"
        await eventually(lambda: c.consumer.committed == 2)
        assert c.consumer.committed == 2
        assert 'escalator_review_invalid_items_total{queue="review"} 1.0' in (
            c.metrics.exposition().decode()
        )


async def test_a_label_outside_the_set_is_refused() -> None:
    """The label must be one of the item's labels; nothing is published."""
    async with running([item("a")]) as c:
        lease = c.q.lease("review", "alice")
        assert lease is not None
        assert await c.q.decide(lease.id, "alice", "<script>", None) == "invalid"
        assert c.producer.sent == []


async def test_an_unacknowledged_decision_is_delivered_when_the_broker_is_back() -> None:
    """When the broker does not acknowledge, decide says "pending" (the page says so), the
    item stays uncommitted, and the engine keeps the verdict: once the broker is back it is
    published and committed; deciding again meanwhile is a double submit."""
    async with running([item("a")]) as c:
        lease = c.q.lease("review", "alice")
        assert lease is not None
        c.producer.fail = True
        assert await c.q.decide(lease.id, "alice", "safe", None) == "pending"
        assert c.consumer.committed is None
        assert await c.q.decide(lease.id, "alice", "unsafe", None) == "duplicate"
        c.producer.fail = False
        await eventually(lambda: c.consumer.committed == 1, timeout_s=15)
        assert c.consumer.committed == 1
        assert [t for t, _ in c.producer.sent] == [TOPICS.results, TOPICS.decisions]
        assert orjson.loads(c.producer.sent[0][1])["label"] == "safe"


async def test_a_slow_acknowledgement_is_pending_counted_and_delivered_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An acknowledgement slower than the decision's wait: decide answers "pending" (not an
    exception, which the page would show as a server error), counts it, and the item leaves
    the queue; when the acknowledgement comes the decision is committed, published once, and
    logged and timed as decided then."""
    caplog.set_level(logging.INFO, "escalator.review")
    async with running([item("a", 1), item("b", 2)]) as c:
        lease = c.q.lease("review", "alice")
        assert lease is not None and lease.item.request.id == "a"
        c.producer.slow = asyncio.Event()
        try:
            assert await c.q.decide(lease.id, "alice", "safe", None) == "pending"
            counted = c.metrics.exposition().decode()
            assert (
                'escalator_review_decisions_total{outcome="pending",queue="review",'
                'reviewer="alice"} 1.0'
            ) in counted
            assert 'outcome="done"' not in counted
            assert "review_decided" not in caplog.text
            assert c.consumer.committed is None
            following = c.q.lease("review", "alice")
            assert following is not None and following.item.request.id == "b"
        finally:
            c.producer.slow.set()
        await eventually(lambda: c.consumer.committed == 1)
        assert c.consumer.committed == 1
        assert [t for t, _ in c.producer.sent] == [TOPICS.results, TOPICS.decisions]
        assert caplog.text.count("review_decided") == 1
        timed = 'escalator_review_decision_seconds_count{queue="review"} 1.0'
        assert timed in c.metrics.exposition().decode()


async def test_a_skipped_item_comes_back_last_for_whoever_skipped_it() -> None:
    """Skip gives the item back: the skipper gets the next one, someone else gets it, and the
    skipper gets it again only when nothing else is left."""
    async with running([item("a", 1), item("b", 2)]) as c:
        q = c.q
        first = q.lease("review", "alice")
        assert first is not None and first.item.request.id == "a"
        q.release(first.id, "alice")
        again = q.lease("review", "alice")
        assert again is not None and again.item.request.id == "b"
        other = q.lease("review", "bob")
        assert other is not None and other.item.request.id == "a"
        q.release(other.id, "bob")
        assert await q.decide(again.id, "alice", "safe", None) == "done"
        last = q.lease("review", "alice")
        assert last is not None and last.item.request.id == "a"


async def test_two_copies_of_one_item_both_leave_the_queue() -> None:
    """The same request twice before either is decided (a redelivered hand-off): deciding
    one makes the other a duplicate that leaves the queue, and the commit passes both."""
    async with running([item("a"), item("a"), item("b")]) as c:
        alice, bob = c.q.lease("review", "alice"), c.q.lease("review", "bob")
        assert alice is not None and bob is not None
        assert alice.item == bob.item  # both copies of a
        assert await c.q.decide(alice.id, "alice", "safe", None) == "done"
        assert await c.q.decide(bob.id, "bob", "unsafe", None) == "duplicate"
        again = c.q.lease("review", "bob")
        assert again is not None and again.item.request.id == "b"
        assert await c.q.decide(again.id, "bob", "safe", None) == "done"
        await eventually(lambda: c.consumer.committed == 3)
        assert c.consumer.committed == 3
        assert len(c.producer.sent) == 4  # a and b: a result and a decision each


async def test_a_revoked_partition_leaves_the_queue_and_a_stale_lease_is_lost() -> None:
    """A revocation takes the partition's undecided items out of the queue without waiting
    for them; a lease from before it (expired or not) is lost once the partition is assigned
    again, and the item's new copy is decided once."""
    async with running([item("a")], lease_s=10) as c:
        old = c.q.lease("review", "alice")
        assert old is not None
        c.clock.now += 11
        c.q.stats()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await c.consumer.listener.on_partitions_revoked({TP})
        assert loop.time() - started < 2, "the revocation waited for an undecided item"
        assert c.q.stats()[0].depth == 0 and c.q.lease("review", "bob") is None
        c.consumer.pending = [Rec(0, item("a"))]
        await c.consumer.listener.on_partitions_assigned({TP})
        await eventually(lambda: c.q.stats()[0].depth == 1)
        assert await c.q.decide(old.id, "alice", "safe", None) == "lost"
        new = c.q.lease("review", "bob")
        assert new is not None
        assert await c.q.decide(new.id, "bob", "safe", None) == "done"
        await eventually(lambda: c.consumer.committed == 1)
        assert len(c.producer.sent) == 2 and c.consumer.committed == 1


async def test_the_buffer_bounds_what_a_console_holds_per_queue() -> None:
    """ESCALATOR_REVIEW_BUFFER is the workers' in-flight limit: beyond it a queue's topic is
    not fetched (the rest is counted as depth, from the lag), and deciding makes room."""
    async with running([item(f"r{i}", i) for i in range(5)], buffer=3) as c:
        c.consumer.high = 5
        await eventually(lambda: c.q.stats()[0].depth == 5)
        assert len(c.q.waiting("review")) == 3
        assert len(c.consumer.pending) == 2
        assert c.q.stats()[0].depth == 5, "the two not fetched count"
        lease = c.q.lease("review", "alice")
        assert lease is not None
        assert await c.q.decide(lease.id, "alice", "safe", None) == "done"
        await eventually(lambda: len(c.consumer.pending) == 1)
        await asyncio.sleep(0.05)
        assert [i.request.id for i in c.q.waiting("review")] == ["r1", "r2", "r3"]


async def test_a_revocation_waits_for_a_decision_being_delivered_and_commits_it() -> None:
    """A decision whose acknowledgement is still on its way when the partition is revoked:
    the revocation waits for it (not for the undecided item beside it), the reviewer is told
    "done", and the revocation's commit passes the decided item."""
    async with running([item("a", 1), item("b", 2)]) as c:
        lease = c.q.lease("review", "alice")
        assert lease is not None and lease.item.request.id == "a"
        c.producer.slow = asyncio.Event()
        deciding = asyncio.create_task(c.q.decide(lease.id, "alice", "safe", None))
        await eventually(lambda: len(c.producer.sent) == 2)
        revoking = asyncio.create_task(c.consumer.listener.on_partitions_revoked({TP}))
        await asyncio.sleep(0.2)
        assert not revoking.done(), "the revocation waits for the decision being delivered"
        assert c.q.stats()[0].depth == 0, "the undecided item left the queue at once"
        c.producer.slow.set()
        assert await asyncio.wait_for(deciding, 5) == "done"
        await asyncio.wait_for(revoking, 5)
        assert c.consumer.committed == 1, "committed with the revocation, not past b"
