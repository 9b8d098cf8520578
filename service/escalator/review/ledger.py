"""What the console holds of each review item it has been handed (an :class:`Entry`), what
``handle`` waits for (an :class:`Outcome`), and the bounded memory of decided review ids.
Plain data and pure functions; ``review/handler.py`` owns the behaviour around them. The
commit watermark is not here: it is the engine's (``engine/delivery.py``)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson
from aiokafka import TopicPartition

from escalator.contract.decisions import HUMAN, Decision, NotADecision
from escalator.contract.messages import Headers
from escalator.contract.reviews import ReviewItem, Verdict
from escalator.observability.tracing import HumanSpans
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


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The item was decided already (found on the decisions log, or decided here): no output,
    and the commit passes it."""


@dataclass(frozen=True, slots=True)
class Park:
    """The item has waited ``share`` of its topic's retention: its output is a parked copy."""

    share: float


#: What an item's ``handle`` waits for: a person's verdict, or one of the two above.
Outcome = Verdict | Duplicate | Park


@dataclass(slots=True, eq=False)
class Entry:
    item: ReviewItem
    tp: TopicPartition
    offset: int
    #: Set once: what ``handle`` returns outputs for. Cancelled: the item is given up
    #: (its partition went, or the console stops) and comes back to the next owner.
    outcome: asyncio.Future[Outcome]
    #: Set when the engine's strategy has the outputs (at-least-once: acknowledged).
    delivered: asyncio.Future[None]
    #: The review item's key (the request's key) and propagated headers (traceparent...):
    #: the human result carries them, as every other result does.
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    #: Checked against the decisions log (the recovery scan): only then is it shown.
    shown: bool = False
    lease: Lease | None = None
    #: Reviewers who gave this item back (skip): they get other items first.
    skipped: set[str] = field(default_factory=set)
    #: The record as it arrived (timestamp, value, every header): what parking copies.
    timestamp_ms: int = 0
    raw: bytes | None = None
    raw_headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    #: The lease a verdict came with, while it is delivered (deciding again: a double submit).
    sent_as: str | None = None
    #: The spans of its decision (observability/tracing.py), ended once delivered.
    spans: HumanSpans | None = None

    @property
    def deciding(self) -> bool:
        """An outcome is set: the item is out of the queue, its outputs on their way."""
        return self.outcome.done()

    @property
    def key_of(self) -> tuple[TopicPartition, int]:
        return (self.tp, self.offset)


def human_decision_of(value: bytes | None) -> tuple[str, str | None] | None:
    """A human decision's review id, and the request id whose human result must be on the
    results topic for it to count (None on the adjudications queue, which has no result);
    None for anything else."""
    try:
        decision = Decision.from_json(value or b"")
    except NotADecision:
        return None
    if decision.outcome != HUMAN or decision.review is None or not decision.review.review_id:
        return None
    needs = decision.id if decision.review.queue == "review" else None
    return decision.review.review_id, needs


def human_result_id(value: bytes | None) -> str | None:
    """The request id of a result a person decided (tier ``human``); None for any other."""
    try:
        found = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(found, dict) or found.get("tier") != "human":
        return None
    request_id = found.get("id")
    return request_id if isinstance(request_id, str) else None


def review_id_of(value: bytes | None) -> str | None:
    """The review id of a human decision on the decisions topic (None for anything else)."""
    try:
        decision = Decision.from_json(value or b"")
    except NotADecision:
        return None
    if decision.outcome != HUMAN or decision.review is None:
        return None
    return decision.review.review_id or None
