"""The review console parks items that wait for people past ESCALATOR_PARK_AT of their
topic's retention (review/parking.py), with the tiers' rule: copied byte for byte with why,
acknowledged, then out of the queue and passed by the commit watermark."""

from __future__ import annotations

from aiokafka import TopicPartition

from escalator.config import ReviewSettings
from escalator.contract.parking import ParkedInfo
from escalator.kafka.admin import Peek
from escalator.kafka.retention import TopicRetention
from escalator.observability.metrics import Metrics
from escalator.review.consumer import ReviewConsumer
from escalator.review.parking import ReviewParking
from tests.unit.review.test_consumer import (
    TOPICS,
    TP,
    Clock,
    FakeConsumer,
    FakeProducer,
    Rec,
    item,
    pump,
)

RETENTION_MS = 1_000_000  # the clock starts 1,000 s after the records' default timestamp


class View:
    def __init__(self, end: int) -> None:
        self.end = end
        self.log_start = 0

    async def retention(self, topic: str) -> TopicRetention:
        return TopicRetention(topic, RETENTION_MS, None)

    async def bounds(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        return {tp: (self.log_start, self.end) for tp in tps}

    async def committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {}

    async def peek(self, tp: TopicPartition, offset: int) -> Peek | None:
        raise AssertionError("the console knows its items' timestamps")

    async def close(self) -> None: ...


async def console(
    records: list[Rec], *, enabled: bool = True
) -> tuple[ReviewConsumer, FakeConsumer, FakeProducer, Clock, Metrics, View]:
    consumer, producer, clock, metrics = FakeConsumer(), FakeProducer(), Clock(), Metrics()
    view = View(len(records))

    async def read_decided(since_ms: int) -> list[str]:
        return []

    parking = ReviewParking(
        topics=[TOPICS.reviews, TOPICS.adjudications],
        group="review",
        parked_topic=TOPICS.parked,
        log_view=view,
        metrics=metrics,
        park_at=0.5,
        check_s=0.01,
        enabled=enabled,
        clock=clock,
    )
    q = ReviewConsumer(
        kafka=None,  # type: ignore[arg-type]
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        topics=TOPICS,
        settings=ReviewSettings(),
        metrics=metrics,
        max_text_chars=1000,
        clock=clock,
        read_decided=read_decided,
        parking=parking,
    )
    await q.__aenter__()
    consumer.pending = records
    await pump(q)
    return q, consumer, producer, clock, metrics, view


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_items_near_retention_are_parked_and_leave_the_queue() -> None:
    """Items past 0.5 of retention are copied (key, value, headers) and committed past; a
    younger one stays; a reviewer holding a parked item gets "lost"."""
    old = [Rec(0, item("a"), timestamp=1_600_000), Rec(1, item("b"), timestamp=1_600_000)]
    young = Rec(2, item("c"), timestamp=1_900_000)
    q, consumer, producer, clock, metrics, _ = await console([*old, young])
    lease = q.lease("review", "alice")
    assert lease is not None and lease.item.review_id == "review:a"
    assert consumer.committed in (None, 0), "at 0.4 of retention nothing is parked"
    clock.now += 200
    await pump(q)
    parked = [(t, v) for t, v in producer.sent if t == TOPICS.parked]
    assert parked == [(TOPICS.parked, old[0].value), (TOPICS.parked, old[1].value)]
    info = ParkedInfo.from_headers(producer.headers[TOPICS.parked])
    assert info.reason == "awaiting_review" and info.tier == "review"
    assert (info.source_topic, info.source_offset) == (TP.topic, 1)
    assert info.original == [("traceparent", b"00-abc-01")]
    assert consumer.committed == 2, "the watermark passed the parked items, not the young one"
    assert [i.review_id for i in q.waiting("review")] == ["review:c"]
    assert await q.decide(lease.id, "alice", "safe", None) == "lost"
    assert value(metrics, "escalator_parked_total", tier="review", topic=TP.topic) == 2
    assert value(metrics, "escalator_retention_used_ratio", tier="review", topic=TP.topic) < 0.5, (
        "what is left is the young item"
    )
    await q.__aexit__(None, None, None)


async def test_an_unacknowledged_copy_parks_nothing() -> None:
    """A failed copy leaves the item in the queue, undecided and uncommitted; the next check
    parks it."""
    q, consumer, producer, clock, metrics, _ = await console(
        [Rec(0, item("a"), timestamp=1_600_000)]
    )
    producer.fail = True
    clock.now += 200
    await pump(q)
    assert consumer.committed in (None, 0)
    assert [i.review_id for i in q.waiting("review")] == ["review:a"]
    assert value(metrics, "escalator_parked_total", tier="review", topic=TP.topic) == 0
    producer.fail = False
    clock.now += 0.02
    await pump(q)
    assert consumer.committed == 1 and q.waiting("review") == []


async def test_with_parking_off_the_console_reports_and_counts_a_loss() -> None:
    """Off: nothing parked; the share is exported, and a log start past the commit is lost
    work, except items the console holds."""
    records = [Rec(i, item(f"r{i}"), timestamp=1_400_000) for i in range(3)]
    q, _, producer, clock, metrics, view = await console(records, enabled=False)
    clock.now += 0.02
    view.log_start, view.end = 10, 10  # 0..9 deleted; 0..2 are held here
    q._parts[TP].committed = 0
    await pump(q)
    assert all(t != TOPICS.parked for t, _ in producer.sent)
    assert value(metrics, "escalator_retention_used_ratio", tier="review", topic=TP.topic) > 0.5
    assert value(metrics, "escalator_retention_lost_total", tier="review", topic=TP.topic) == 7
