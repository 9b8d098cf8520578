"""The review queues' rules, against fakes of the consumer and producer: leases, the commit
watermark, duplicates and recovery, bad items and a broker that does not acknowledge."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from escalator.config import ReviewSettings, Topics
from escalator.contract.messages import Request
from escalator.contract.reviews import ReviewItem, review_item_value
from escalator.model.task import load_task
from escalator.observability.metrics import Metrics
from escalator.review.consumer import ReviewConsumer
from tests.unit.tiers.test_handlers import ok

TOPICS = Topics()
TP = TopicPartition(TOPICS.reviews, 0)
LABELS = load_task(None).labels


@dataclass
class Rec:
    offset: int
    value: bytes | None
    timestamp: int = 1_000_000
    headers: tuple[tuple[str, bytes], ...] = (("traceparent", b"00-abc-01"),)
    key: bytes | None = b"request-key"


class FakeConsumer:
    def __init__(self) -> None:
        self.pending: list[Rec] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned([TP])

    async def stop(self) -> None:
        return None

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Rec]]:
        await asyncio.sleep(0.005)  # the real one waits for records: let others run
        out, self.pending = self.pending, []
        return {TP: out} if out else {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        return 0

    def pause(self, *tps: TopicPartition) -> None: ...
    def resume(self, *tps: TopicPartition) -> None: ...

    @property
    def committed(self) -> int | None:
        return self.commits[-1][TP] if self.commits else None


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.keys: list[bytes | None] = []
        self.headers: dict[str, Any] = {}
        self.fail = False

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            from aiokafka.errors import KafkaTimeoutError

            future.set_exception(KafkaTimeoutError())
        else:
            self.sent.append((topic, value))
            self.keys.append(key)
            self.headers[topic] = headers
            future.set_result(None)
        return future


def item(rid: str, created_ms: int = 1_000) -> bytes:
    return review_item_value(
        ReviewItem(
            queue="review",
            request=Request(rid, f"text of {rid}"),
            reason="strong_low_confidence",
            cheap=ok("safe", 0.4),
            strong=ok("unsafe", 0.4, tier="strong"),
            labels=LABELS,
            escalation_reason="low_confidence",
            shadow=False,
            sample_rate=1.0,
            review_rate=1.0,
            threshold_version="v1",
            created_ms=created_ms,
        )
    )


class Clock:
    def __init__(self) -> None:
        self.now = 2_000.0

    def __call__(self) -> float:
        return self.now


async def pump(q: ReviewConsumer) -> None:
    """Run the consumer's loop for a moment: it takes what the fake has fetched."""
    q._stop.clear()
    task = asyncio.create_task(q.run())
    await asyncio.sleep(0.05)
    q.stop()
    await task


async def queues(
    values: list[bytes | None], decided: set[str] | None = None, lease_s: float = 60
) -> tuple[ReviewConsumer, FakeConsumer, FakeProducer, Clock, Metrics]:
    consumer, producer, clock, metrics = FakeConsumer(), FakeProducer(), Clock(), Metrics()

    async def read_decided(since_ms: int) -> list[str]:
        return sorted(decided or ())

    q = ReviewConsumer(
        kafka=None,  # type: ignore[arg-type]
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        topics=TOPICS,
        settings=replace(ReviewSettings(), lease_s=lease_s),
        metrics=metrics,
        max_text_chars=1000,
        clock=clock,
        read_decided=read_decided,
    )
    await q.__aenter__()
    consumer.pending = [Rec(i, v) for i, v in enumerate(values)]
    await pump(q)
    return q, consumer, producer, clock, metrics


async def test_two_reviewers_get_different_items_and_keep_their_own() -> None:
    """Leases: alice and bob never share an item; asking again gives the same one."""
    q, *_ = await queues([item("a"), item("b"), item("c")])
    a, b = q.lease("review", "alice"), q.lease("review", "bob")
    assert a is not None and b is not None
    assert a.item.review_id != b.item.review_id
    assert q.lease("review", "alice") == a
    assert [s.leased for s in q.stats()] == [2, 0] and q.stats()[0].depth == 3


async def test_an_expired_lease_returns_the_item_and_a_late_decision_is_lost_if_taken() -> None:
    """After the lease time the item is free again; once bob holds it, alice's decision is
    refused as lost and bob's counts."""
    q, _, _, clock, metrics = await queues([item("a")], lease_s=10)
    a = q.lease("review", "alice")
    assert a is not None
    clock.now += 11
    b = q.lease("review", "bob")
    assert b is not None and b.item == a.item
    assert await q.decide(a.id, "alice", "safe", None) == "lost"
    assert await q.decide(b.id, "bob", "unsafe", None) == "done"
    assert 'escalator_review_leases_expired_total{queue="review"} 1.0' in (
        metrics.exposition().decode()
    )


async def test_an_expired_lease_nobody_took_still_decides() -> None:
    """A reviewer who was slow but not overtaken still has their decision counted."""
    q, _, producer, clock, _ = await queues([item("a")], lease_s=10)
    a = q.lease("review", "alice")
    assert a is not None
    clock.now += 11
    q.stats()
    assert await q.decide(a.id, "alice", "safe", "slow") == "done"
    assert len(producer.sent) == 2


async def test_the_commit_never_passes_an_undecided_item() -> None:
    """Deciding offset 1 first commits nothing past 0; deciding 0 then commits 2."""
    q, consumer, *_ = await queues([item("a", 1), item("b", 2)])
    first = q.lease("review", "alice")
    second = q.lease("review", "bob")
    assert first is not None and second is not None
    assert first.item.request.id == "a"  # the oldest first
    assert await q.decide(second.id, "bob", "safe", None) == "done"
    assert consumer.committed in (None, 0)
    assert await q.decide(first.id, "alice", "safe", None) == "done"
    assert consumer.committed == 2


async def test_a_decision_publishes_a_result_and_a_human_decision_then_commits() -> None:
    """The reviews queue: one result with the reviewer, one human decision; "neither" is a
    null label."""
    q, consumer, producer, *_ = await queues([item("a")])
    lease = q.lease("review", "alice")
    assert lease is not None
    assert await q.decide(lease.id, "alice", None, "none fit") == "done"
    topics = sorted(t for t, _ in producer.sent)
    assert topics == [TOPICS.decisions, TOPICS.results]
    assert producer.keys == [b"request-key", b"request-key"]
    assert producer.headers[TOPICS.results] == [("traceparent", b"00-abc-01")]
    result = orjson.loads(next(v for t, v in producer.sent if t == TOPICS.results))
    assert (result["label"], result["reviewer"], result["tier"]) == (None, "alice", "human")
    assert consumer.committed == 1


async def test_a_repeated_item_and_a_repeated_decision_count_once() -> None:
    """The same request twice (a duplicate item): the second is done at once; deciding the
    same lease twice gives duplicate and publishes nothing more."""
    q, consumer, producer, _, metrics = await queues([item("a"), item("b")])
    lease = q.lease("review", "alice")
    assert lease is not None
    assert await q.decide(lease.id, "alice", "safe", None) == "done"
    assert await q.decide(lease.id, "alice", "safe", None) in ("duplicate", "lost")
    assert len(producer.sent) == 2
    consumer.pending = [Rec(2, item("a"))]
    await pump(q)
    assert q.stats()[0].depth == 1  # only b waits
    assert 'escalator_review_duplicates_total{queue="review"} 1.0' in (
        metrics.exposition().decode()
    )


async def test_items_decided_before_a_restart_are_recognised_and_committed() -> None:
    """Recovery: review ids found in the decisions log are done before anything is shown."""
    q, consumer, *_ = await queues([item("a"), item("b"), item("c")], decided={"review:a"})
    assert q.stats()[0].depth == 2
    lease = q.lease("review", "alice")
    assert lease is not None and lease.item.request.id == "b"
    assert consumer.committed == 1


async def test_a_bad_record_is_dead_lettered_and_passed() -> None:
    """Not a review item: a dead letter with its reason; the commit moves past it."""
    q, consumer, producer, *_ = await queues([b"not json", item("a")])
    assert [t for t, _ in producer.sent] == [TOPICS.dead_letter]
    lease = q.lease("review", "alice")
    assert lease is not None
    assert await q.decide(lease.id, "alice", "safe", None) == "done"
    assert consumer.committed == 2


async def test_a_label_outside_the_set_is_refused() -> None:
    """The label must be one of the item's labels; nothing is published."""
    q, _, producer, *_ = await queues([item("a")])
    lease = q.lease("review", "alice")
    assert lease is not None
    assert await q.decide(lease.id, "alice", "<script>", None) == "invalid"
    assert producer.sent == []


async def test_an_unacknowledged_decision_is_not_done() -> None:
    """When the broker does not acknowledge, decide raises, the item stays undecided and
    uncommitted, and the same lease can decide again once the broker is back."""
    q, consumer, producer, *_ = await queues([item("a")])
    lease = q.lease("review", "alice")
    assert lease is not None
    producer.fail = True
    with pytest.raises(Exception, match=r"KafkaTimeoutError|Timeout"):
        await q.decide(lease.id, "alice", "safe", None)
    assert q.stats()[0].depth == 1 and consumer.committed in (None, 0)
    producer.fail = False
    assert await q.decide(lease.id, "alice", "safe", None) == "done"
    assert consumer.committed == 1


async def test_a_skipped_item_comes_back_last_for_whoever_skipped_it() -> None:
    """Skip gives the item back: the skipper gets the next one, someone else gets it, and the
    skipper gets it again only when nothing else is left."""
    q, *_ = await queues([item("a", 1), item("b", 2)])
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
    q, consumer, producer, *_ = await queues([item("a"), item("a"), item("b")])
    alice, bob = q.lease("review", "alice"), q.lease("review", "bob")
    assert alice is not None and bob is not None
    assert alice.item == bob.item  # both copies of a
    assert await q.decide(alice.id, "alice", "safe", None) == "done"
    assert await q.decide(bob.id, "bob", "unsafe", None) == "duplicate"
    again = q.lease("review", "bob")
    assert again is not None and again.item.request.id == "b"
    assert await q.decide(again.id, "bob", "safe", None) == "done"
    assert consumer.committed == 3
    assert len(producer.sent) == 4  # a and b: a result and a decision each


async def test_a_stale_lease_cannot_decide_an_item_that_came_back() -> None:
    """A lease from before a revocation (expired or not) is lost after the partition is
    assigned again; the item's new copy is decided once."""
    q, consumer, producer, clock, _ = await queues([item("a")], lease_s=10)
    old = q.lease("review", "alice")
    assert old is not None
    clock.now += 11
    q.stats()
    await q._revoked([TP])
    q._assigned([TP])
    consumer.pending = [Rec(0, item("a"))]
    await pump(q)
    assert await q.decide(old.id, "alice", "safe", None) == "lost"
    new = q.lease("review", "bob")
    assert new is not None
    assert await q.decide(new.id, "bob", "safe", None) == "done"
    assert len(producer.sent) == 2 and consumer.committed == 1


async def test_the_result_is_acknowledged_before_the_decision_is_sent() -> None:
    """If the result cannot be written, no decision is either: the recovery scan (which
    skips items with a decision) can never skip a request whose result was lost."""
    q, _, producer, *_ = await queues([item("a")])
    lease = q.lease("review", "alice")
    assert lease is not None
    producer.fail = True
    with pytest.raises(Exception, match=r"Timeout"):
        await q.decide(lease.id, "alice", "safe", None)
    assert producer.sent == []
    producer.fail = False
    assert await q.decide(lease.id, "alice", "safe", None) == "done"
    assert [t for t, _ in producer.sent] == [TOPICS.results, TOPICS.decisions]
