"""The review console parks items that wait for people past ESCALATOR_PARK_AT of their
topic's retention (review/parking.py, review/handler.py), with the tiers' rule: copied byte
for byte with why, delivered through the engine, then out of the queue and passed by the
commit watermark. The retention watch is the engine's (engine/parking.py), per queue topic."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from escalator.config import ParkingSettings
from escalator.contract.parking import ParkedInfo
from escalator.engine.parking import Parking
from escalator.kafka.admin import Peek
from escalator.kafka.retention import TopicRetention
from escalator.observability.metrics import Metrics
from tests.unit.review.test_assemble import (
    TOPICS,
    TP,
    Clock,
    Rec,
    eventually,
    item,
    running,
)

RETENTION_MS = 1_000_000  # the clock starts 1,000 s after the records' default timestamp
RETENTION = TopicRetention(TP.topic, RETENTION_MS, None)


class View:
    """The broker's view of the reviews partition for the engine's retention watch."""

    def __init__(self, records: list[Rec], committed: int | None = None) -> None:
        self.records = records
        self.end = len(records)
        self.log_start = 0
        self.group_committed = committed

    async def retention(self, topic: str) -> TopicRetention:
        return TopicRetention(topic, RETENTION_MS, None)

    async def bounds(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        return {tp: (self.log_start, self.end) for tp in tps if tp == TP}

    async def committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        c = self.group_committed
        return {tp: c for tp in tps if tp == TP} if c is not None else {}

    async def peek(self, tp: TopicPartition, offset: int) -> Peek | None:
        found = [r for r in self.records if r.offset >= max(offset, self.log_start)]
        return Peek(found[0].offset, found[0].timestamp, 500.0) if found else None

    async def close(self) -> None: ...


def watch_with(view: View, enabled: bool = True):  # type: ignore[no-untyped-def]
    def make(topic: str, metrics: Metrics, clock: Clock) -> Parking | None:
        if topic != TP.topic:
            return None
        return Parking(
            tier="review",
            topic=topic,
            group="review",
            parked_topic=TOPICS.parked,
            log=view,
            metrics=metrics,
            hold=lambda: None,
            park_at=0.5,
            check_s=0.01,
            enabled=enabled,
            clock=clock,
        )

    return make


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_items_near_retention_are_parked_and_leave_the_queue() -> None:
    """Items past 0.5 of retention are copied (key, value, headers) and committed past; a
    younger one stays; a reviewer holding a parked item gets "lost"."""
    old = [Rec(0, item("a"), timestamp=1_600_000), Rec(1, item("b"), timestamp=1_600_000)]
    young = Rec(2, item("c"), timestamp=1_900_000)
    view = View([*old, young])
    # The end offset known from the start: the console's check after the clock moves sees it.
    async with running([*old, young], retention=RETENTION, watch=watch_with(view), high=3) as c:
        lease = c.q.lease("review", "alice")
        assert lease is not None and lease.item.review_id == "review:a"
        m = c.metrics
        # The console checks on its own clock: moved a second, a tick reads it (the oldest
        # item's age, 2,001 s less its creation at 1 s) and checks in the same step.
        c.clock.now += 1
        await eventually(
            lambda: value(m, "escalator_review_oldest_age_seconds", queue="review") == 2000
        )
        assert value(m, "escalator_review_oldest_age_seconds", queue="review") == 2000
        await asyncio.sleep(0.1)
        assert c.consumer.committed is None, "at 0.4 of retention nothing is parked"
        assert [i.review_id for i in c.q.waiting("review")] == ["review:a", "review:b", "review:c"]
        c.clock.now += 200
        await eventually(lambda: c.consumer.committed == 2)
        parked = [(t, v) for t, v in c.producer.sent if t == TOPICS.parked]
        assert parked == [(TOPICS.parked, old[0].value), (TOPICS.parked, old[1].value)]
        info = ParkedInfo.from_headers(c.producer.headers[TOPICS.parked])
        assert info.reason == "awaiting_review" and info.tier == "review"
        assert (info.source_topic, info.source_offset) == (TP.topic, 1)
        assert info.original == [("traceparent", b"00-abc-01")]
        assert c.consumer.committed == 2, "the watermark passed the parked items, not the young one"
        assert [i.review_id for i in c.q.waiting("review")] == ["review:c"]
        assert await c.q.decide(lease.id, "alice", "safe", None) == "lost"
        assert value(m, "escalator_parked_total", tier="review", topic=TP.topic) == 2
        await eventually(
            lambda: (
                0 < value(m, "escalator_retention_used_ratio", tier="review", topic=TP.topic) < 0.5
            )
        )
        share = value(m, "escalator_retention_used_ratio", tier="review", topic=TP.topic)
        assert 0 < share < 0.5, "what is left is the young item"


async def test_an_unacknowledged_copy_is_delivered_when_the_broker_is_back() -> None:
    """A copy the broker does not acknowledge: the item is out of the queue (parking it was
    decided) but uncommitted and not counted; once the broker is back the copy is delivered,
    counted and committed past."""
    rec = Rec(0, item("a"), timestamp=1_600_000)
    async with running([rec], retention=RETENTION, watch=watch_with(View([rec])), high=1) as c:
        c.producer.fail = True
        c.clock.now += 200
        await eventually(lambda: c.q.waiting("review") == [])
        assert c.q.waiting("review") == [], "parking it was decided"
        await asyncio.sleep(0.2)
        assert c.consumer.committed is None
        assert value(c.metrics, "escalator_parked_total", tier="review", topic=TP.topic) == 0
        c.producer.fail = False
        await eventually(lambda: c.consumer.committed == 1, timeout_s=15)
        assert c.consumer.committed == 1
        assert value(c.metrics, "escalator_parked_total", tier="review", topic=TP.topic) == 1


async def test_with_parking_off_the_console_reports_and_counts_a_loss() -> None:
    """Off: nothing parked; the share is exported, and a log start past the commit is lost
    work, except items the console holds."""
    records = [Rec(i, item(f"r{i}"), timestamp=1_400_000) for i in range(3)]
    view = View(records, committed=0)
    off = ParkingSettings(enabled=False, check_s=0.01)
    async with running(
        records, retention=RETENTION, parking=off, watch=watch_with(view, enabled=False)
    ) as c:
        c.consumer.high = 3
        m = c.metrics
        await eventually(
            lambda: value(m, "escalator_retention_used_ratio", tier="review", topic=TP.topic) > 0.5
        )
        assert value(m, "escalator_retention_used_ratio", tier="review", topic=TP.topic) > 0.5
        view.log_start, view.end = 10, 10  # 0..9 deleted; 0..2 are held here
        await eventually(
            lambda: value(m, "escalator_retention_lost_total", tier="review", topic=TP.topic) > 0
        )
        assert all(t != TOPICS.parked for t, _ in c.producer.sent)
        assert value(m, "escalator_retention_lost_total", tier="review", topic=TP.topic) == 7
        assert len(c.q.waiting("review")) == 3
