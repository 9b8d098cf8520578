"""An in-memory :class:`~escalator.review.queues.ReviewQueues`, strict about leases.

It behaves as the protocol says the Kafka one does: one reviewer holds an item at a time, a
lease runs out after ``lease_s`` (then the item is anybody's), a decision needs the
reviewer's own live lease, and an item (``review_id``) is decided once: a second decision is
``duplicate``. Every accepted decision is kept in ``decisions``, every call in ``calls``;
with ``unacknowledged`` set it is answered ``pending`` (kept, not yet acknowledged).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from escalator.contract.messages import Attempt, Request
from escalator.contract.reviews import QUEUES, Queue, ReviewItem
from escalator.review.queues import Lease, Outcome, QueueStat


def make_item(
    request_id: str,
    text: str,
    *,
    queue: Queue = "review",
    labels: tuple[str, ...] = ("safe", "unsafe"),
    cheap: tuple[str | None, float] = ("safe", 0.62),
    strong: tuple[str | None, float] = ("unsafe", 0.55),
    reason: str = "strong_low_confidence",
    created_ms: int | None = None,
) -> ReviewItem:
    """A review item with both answers, as the strong tier writes it."""
    return ReviewItem(
        queue=queue,
        request=Request(id=request_id, text=text),
        reason=reason,
        cheap=Attempt("cheap", "claude-haiku-5-5", cheap[0], cheap[1], cheap[0] is not None),
        strong=Attempt("strong", "claude-sonnet-5-5", strong[0], strong[1], strong[0] is not None),
        labels=labels,
        escalation_reason="low_confidence",
        shadow=False,
        sample_rate=1.0,
        review_rate=1.0,
        threshold_version="test",
        created_ms=int(time.time() * 1000) if created_ms is None else created_ms,
    )


@dataclass(frozen=True, slots=True)
class Recorded:
    review_id: str
    reviewer: str
    label: str | None
    note: str | None


class FakeReviewQueues:
    def __init__(
        self,
        *,
        lease_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        seed: int = 7,
    ) -> None:
        self.lease_s = lease_s
        self.clock = clock
        self._rng = random.Random(seed)
        self._items: list[ReviewItem] = []
        #: Every lease ever handed out, by id; a decided one stays, so a repeat is "duplicate".
        self._leases: dict[str, Lease] = {}
        self._finished: set[str] = set()
        self._decided: set[str] = set()
        self.decisions: list[Recorded] = []
        self.calls: list[tuple[str, ...]] = []
        #: While True the broker is slow: an accepted decision is kept but answered "pending".
        self.unacknowledged = False

    def put(self, item: ReviewItem) -> None:
        self._items.append(item)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _live(self, lease: Lease) -> bool:
        return lease.id not in self._finished and lease.expires_ms > self._now_ms()

    def _holder(self, item: ReviewItem) -> Lease | None:
        for lease in self._leases.values():
            if lease.item is item and self._live(lease):
                return lease
        return None

    def _waiting(self, queue: Queue) -> list[ReviewItem]:
        return [i for i in self._items if i.queue == queue and i.review_id not in self._decided]

    def stats(self) -> list[QueueStat]:
        self.calls.append(("stats",))
        now = self._now_ms()
        out = []
        for queue in QUEUES:
            waiting = self._waiting(queue)
            oldest = min((i.created_ms for i in waiting), default=None)
            out.append(
                QueueStat(
                    queue=queue,
                    depth=len(waiting),
                    leased=sum(1 for i in waiting if self._holder(i) is not None),
                    oldest_age_s=None if oldest is None else (now - oldest) / 1000,
                )
            )
        return out

    def lease(self, queue: Queue, reviewer: str) -> Lease | None:
        self.calls.append(("lease", queue, reviewer))
        waiting = self._waiting(queue)
        for item in waiting:
            held = self._holder(item)
            if held is not None and held.reviewer == reviewer:
                return held
        for item in sorted(waiting, key=lambda i: i.created_ms):
            if self._holder(item) is None:
                now = self._now_ms()
                order = (0, 1) if self._rng.random() < 0.5 else (1, 0)
                lease = Lease(
                    id=uuid.uuid4().hex,
                    queue=queue,
                    reviewer=reviewer,
                    item=item,
                    shown_ms=now,
                    expires_ms=now + int(self.lease_s * 1000),
                    order=order,
                )
                self._leases[lease.id] = lease
                return lease
        return None

    def lease_of(self, lease_id: str, reviewer: str) -> Lease | None:
        lease = self._leases.get(lease_id)
        if lease is None or lease.reviewer != reviewer or not self._live(lease):
            return None
        return lease

    def release(self, lease_id: str, reviewer: str) -> None:
        self.calls.append(("release", lease_id, reviewer))
        if self.lease_of(lease_id, reviewer) is not None:
            self._finished.add(lease_id)

    async def decide(
        self, lease_id: str, reviewer: str, label: str | None, note: str | None
    ) -> Outcome:
        self.calls.append(("decide", lease_id, reviewer, str(label)))
        lease = self._leases.get(lease_id)
        if lease is None:
            return "lost"
        if lease.item.review_id in self._decided:
            return "duplicate"
        if lease.reviewer != reviewer or not self._live(lease):
            return "lost"
        if label is not None and label not in lease.item.labels:
            return "invalid"
        self._decided.add(lease.item.review_id)
        self._finished.add(lease_id)
        self.decisions.append(Recorded(lease.item.review_id, reviewer, label, note))
        return "pending" if self.unacknowledged else "done"
