"""What the console holds of each assigned partition: its items (entries), what is settled,
the commit watermark, and the bounded memory of decided review ids. Plain data and pure
functions; ``review/consumer.py`` owns the I/O around them."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from escalator.contract.decisions import HUMAN, Decision, NotADecision
from escalator.contract.messages import Headers
from escalator.contract.reviews import ReviewItem
from escalator.review.queues import Lease

#: Review ids remembered as decided, at most (the oldest are forgotten first). A repeat older
#: than this many decisions is not recognised in memory; the recovery scan still finds it.
DECIDED_MEMORY = 200_000


class SeenIds:
    """A bounded set of review ids, oldest forgotten first."""

    def __init__(self, limit: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, review_id: str) -> None:
        self._ids[review_id] = None
        self._ids.move_to_end(review_id)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def seen(self, review_id: str) -> bool:
        return review_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(slots=True)
class Entry:
    item: ReviewItem
    tp: TopicPartition
    offset: int
    #: The review item's key (the request's key) and propagated headers (traceparent...):
    #: the human result carries them, as every other result does.
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    lease: Lease | None = None
    deciding: bool = False
    done: bool = False
    #: Reviewers who gave this item back (skip): they get other items first.
    skipped: set[str] = field(default_factory=set)
    #: The record as it arrived (timestamp, value, every header): what parking copies.
    timestamp_ms: int = 0
    raw: bytes | None = None
    raw_headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    #: Copied to the parked topic (review/parking.py): out of the queue, not decided.
    parked: bool = False


@dataclass(slots=True)
class PartitionLedger:
    """One assigned partition: its items in offset order, and what is committed."""

    entries: dict[int, Entry] = field(default_factory=dict)
    #: Offsets fetched and finished without an item (dead-lettered): done at once.
    settled: set[int] = field(default_factory=set)
    committed: int = -1
    #: Until its first records are checked against the decisions log, none is shown.
    recovering: bool = True
    held: list[tuple[int, Entry]] = field(default_factory=list)  # (timestamp, entry)


def watermark(part: PartitionLedger) -> int | None:
    """The offset to commit: the lowest undecided item, or one past everything fetched."""
    if part.recovering and part.held:
        return None
    offsets = sorted([*part.entries, *part.settled])
    if not offsets:
        return None
    for offset in offsets:
        entry = part.entries.get(offset)
        if entry is not None and not entry.done:
            return offset
    return offsets[-1] + 1


def review_id_of(value: bytes | None) -> str | None:
    """The review id of a human decision on the decisions topic (None for anything else)."""
    try:
        decision = Decision.from_json(value or b"")
    except NotADecision:
        return None
    if decision.outcome != HUMAN or decision.review is None:
        return None
    return decision.review.review_id or None
