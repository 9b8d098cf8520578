"""What the console's web page asks of the review queues: the protocol, and its values.

The page (``review/web.py``) never touches Kafka; ``review/handler.py`` implements this over
the reviews and adjudications topics (``review/assemble.py`` runs it on the engine, in the
process's ``Service``). Tests use an in-memory fake of the same protocol.

Leasing: an item is shown to one reviewer at a time. ``lease`` gives a reviewer the item they
already hold in that queue, else the oldest item nobody holds (an expired lease counts as
nobody's). A decision needs the reviewer's own lease; the console acknowledges it only once
the broker has acknowledged its records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from escalator.contract.reviews import Queue, ReviewItem

#: done: published and acknowledged. duplicate: this item (review_id) was already decided; the
#: decision is ignored. lost: the lease is not this reviewer's any more (expired and taken, or
#: the partition moved to another console); nothing was published. invalid: the label is not
#: one of the item's labels. pending: sent, but the broker has not acknowledged it in time;
#: it is kept and delivered once the broker answers (if the console stops first, the item
#: comes back to the queue unless the broker had in fact recorded the decision).
Outcome = Literal["done", "duplicate", "lost", "invalid", "pending"]


@dataclass(frozen=True, slots=True)
class QueueStat:
    queue: Queue
    #: Items waiting (not decided), leased ones included.
    depth: int
    leased: int
    #: Age of the oldest waiting item, in seconds; None when the queue is empty.
    oldest_age_s: float | None


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    queue: Queue
    reviewer: str
    item: ReviewItem
    #: When the item was first shown to this reviewer, and when the lease runs out (epoch ms).
    shown_ms: int
    expires_ms: int
    #: The order the two answers are shown in, blind (no model names): (0, 1) is cheap first,
    #: (1, 0) strong first. Drawn at random per lease.
    order: tuple[int, int]


class ReviewQueues(Protocol):
    def stats(self) -> list[QueueStat]:
        """Every queue, in a fixed order, with its depth and the age of its oldest item."""
        ...

    def lease(self, queue: Queue, reviewer: str) -> Lease | None:
        """The reviewer's current item in ``queue``, or the oldest free one; None if none."""
        ...

    def lease_of(self, lease_id: str, reviewer: str) -> Lease | None:
        """The reviewer's live lease with this id, or None."""
        ...

    def release(self, lease_id: str, reviewer: str) -> None:
        """Give the item back to the queue (skip) without deciding it; ``lease`` then gives
        this reviewer other items first, and this one only when nothing else is left."""
        ...

    async def decide(
        self, lease_id: str, reviewer: str, label: str | None, note: str | None
    ) -> Outcome:
        """Publish the verdict (label None: "neither") and wait for the broker's ack."""
        ...
