"""Which review items to park, and their parked copies: items that wait for people longer
than their topic keeps them are parked with the tiers' rule and the same alert.

The retention watch itself is the engine's (``engine/parking.py``, one per queue's worker):
it reads each topic's retention, exports ``escalator_retention_used_ratio{tier="review"}``
and the oldest item's age, and counts records the broker deleted before the commit passed
them (``escalator_retention_lost_total``). People have no "hold" that ends, so that watch never
parks a whole partition; instead, every ``ESCALATOR_RETENTION_CHECK_S`` the console
(``handler.py``) parks each undecided item that has used ``ESCALATOR_PARK_AT`` of its topic's
retention (by its record's timestamp, and the bytes after it): its outcome is a copy of it,
byte for byte with key and headers plus why (reason ``awaiting_review``), to the parked
topic, delivered and committed through the engine's strategy like a decision. A reviewer
still holding it gets ``lost``. ``escalator parked replay`` puts it back on its queue when
people have caught up.
"""

from __future__ import annotations

from collections.abc import Iterable

from escalator.contract.parking import Why, parked_headers
from escalator.engine.delivery import Output
from escalator.kafka.retention import TopicRetention, record_log_bytes
from escalator.review.ledger import Entry

TIER = "review"
REASON = "awaiting_review"


def bytes_per_record(entries: Iterable[Entry]) -> float:
    """The size in the log of the records after an item, estimated from those held: the
    largest while there are few, the mean after."""
    sizes = [record_log_bytes(len(e.key or b""), len(e.raw or b""), e.raw_headers) for e in entries]
    if not sizes:
        return 0.0
    return max(sizes) if len(sizes) < 10 else sum(sizes) / len(sizes)


def share_used(
    entry: Entry, retention: TopicRetention, *, end: int, per_record: float, now_ms: float
) -> float:
    """The share of its topic's retention ``entry`` has used (``end``: the partition's end
    offset)."""
    return retention.share_used(
        age_ms=now_ms - entry.timestamp_ms, bytes_after=max(0, end - entry.offset) * per_record
    )


def parked_copy(entry: Entry, share: float, *, parked_topic: str, now_s: float) -> Output:
    """The item as it arrived, plus why it was parked."""
    why = Why(
        reason=REASON,
        held_since_s=entry.timestamp_ms / 1000,
        ends_at_s=None,
        retention_used=share,
        tier=TIER,
    )
    headers = parked_headers(
        entry.raw_headers,
        why,
        topic=entry.tp.topic,
        partition=entry.tp.partition,
        offset=entry.offset,
        timestamp_ms=entry.timestamp_ms,
        now_s=now_s,
    )
    return Output(parked_topic, entry.raw, entry.key, headers)
