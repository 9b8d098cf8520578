"""How much of its topic's retention a held record has used: the deadline arithmetic.

Kafka deletes whole segments of a partition, never single records, at each retention check
(the broker's ``log.retention.check.interval.ms``, 5 minutes by default):

- **By time** (``retention.ms``): a segment goes once its *newest* record's timestamp is more
  than ``retention.ms`` old. The active segment goes too (the broker rolls a new, empty one
  first). So a record lives at least ``retention.ms`` past its own timestamp, and at most until
  the newest record of its segment is that old, plus one check interval. Segment rolling
  (``segment.ms``, ``segment.bytes``) can only make it later, never earlier.
- **By size** (``retention.bytes``, per partition): the oldest segments go while what would be
  left is still at least ``retention.bytes``. A segment goes once the bytes in the segments
  *after* it reach ``retention.bytes``. So a record survives while the bytes written after it
  stay below ``retention.bytes`` (a record that ends its segment goes exactly then), and at most
  until the bytes after it reach ``retention.bytes`` plus one segment.

So the share of its retention a held record has used,

    max((now - timestamp) / retention.ms,  bytes after it / retention.bytes),

is below 1 for as long as the broker cannot have deleted it, and it overshoots the truth by at
most one segment's span (time or bytes) and one check interval. Acting at a share ``park_at``
below 1 (``ESCALATOR_PARK_AT``, 0.5) acts before the broker can. The timestamps are the
records' own (CreateTime, or LogAppendTime when the topic says so): the broker compares the
same ones.

A consumer cannot see segment files, so the bytes after a record are estimated: the records
after it (offsets) times a per-record size that bounds what one record takes in the log from
above (:func:`record_log_bytes`: uncompressed, each in a batch of its own). A compressed topic
takes less, which makes the estimate early, never late.

``tests/unit/kafka/test_retention.py`` checks this against a simulated broker log that rolls and
deletes segments by Kafka's rules (the known truth).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: A record batch's header in the log (magic v2): the cost of a record alone in its batch.
BATCH_OVERHEAD = 61
#: A record's own framing, at most: length, attributes, timestamp and offset deltas, key and
#: value lengths and the header count, each a varint of at most 5 (10 for the timestamp).
RECORD_OVERHEAD = 36
#: Each header's two length varints, at most.
HEADER_OVERHEAD = 10


@dataclass(frozen=True, slots=True)
class TopicRetention:
    """A topic's effective retention, as the broker describes it (``describe_configs``)."""

    topic: str
    #: None: unlimited (``-1``).
    retention_ms: int | None
    #: Per partition; None: unlimited (``-1``, the default).
    retention_bytes: int | None
    #: ``cleanup.policy`` has ``delete`` (``compact`` alone never deletes by age or size).
    deletes: bool = True
    compacted: bool = False
    segment_bytes: int | None = None
    segment_ms: int | None = None
    #: ``CreateTime`` (the producer's clock) or ``LogAppendTime`` (the broker's).
    timestamp_type: str = "CreateTime"

    @classmethod
    def from_configs(cls, topic: str, configs: Mapping[str, str | None]) -> TopicRetention:
        """From the config entries ``describe_configs`` returns; a missing entry is Kafka's
        default (7 days, unlimited bytes, ``delete``)."""

        def number(name: str, default: int) -> int | None:
            raw = configs.get(name)
            try:
                value = default if raw is None else int(raw)
            except ValueError:
                value = default
            return None if value < 0 else value

        policy = {p.strip() for p in (configs.get("cleanup.policy") or "delete").split(",")}
        return cls(
            topic=topic,
            retention_ms=number("retention.ms", 7 * 24 * 3600 * 1000),
            retention_bytes=number("retention.bytes", -1),
            deletes="delete" in policy,
            compacted="compact" in policy,
            segment_bytes=number("segment.bytes", 1024**3),
            segment_ms=number("segment.ms", 7 * 24 * 3600 * 1000),
            timestamp_type=configs.get("message.timestamp.type") or "CreateTime",
        )

    @property
    def bounded(self) -> bool:
        """True when the broker deletes records of this topic by age or by size."""
        return self.deletes and (self.retention_ms is not None or self.retention_bytes is not None)

    def share_used(self, *, age_ms: float, bytes_after: float) -> float:
        """The share of retention a record of this age with this many bytes after it has used
        (0 when the topic keeps records for ever). Below 1 the broker cannot have deleted it."""
        if not self.deletes:
            return 0.0
        share = 0.0
        if self.retention_ms is not None:
            share = max(share, max(0.0, age_ms) / max(1, self.retention_ms))
        if self.retention_bytes is not None:
            share = max(share, max(0.0, bytes_after) / max(1, self.retention_bytes))
        return share

    def describe(self) -> str:
        """One line for logs and ``escalator doctor``."""
        if not self.deletes:
            return "cleanup.policy=compact: never deleted by age or size"
        parts = [
            "retention.ms="
            + ("unlimited" if self.retention_ms is None else f"{self.retention_ms}"),
            "retention.bytes="
            + ("unlimited" if self.retention_bytes is None else f"{self.retention_bytes}"),
        ]
        if self.compacted:
            parts.append("also compacted")
        return ", ".join(parts)


def record_log_bytes(
    key_size: int, value_size: int, headers: Iterable[tuple[str, bytes | None]] = ()
) -> int:
    """An upper bound on what one record takes in the log (uncompressed, alone in its batch)."""
    size = BATCH_OVERHEAD + RECORD_OVERHEAD + max(0, key_size) + max(0, value_size)
    for name, value in headers:
        size += HEADER_OVERHEAD + len(name.encode()) + (len(value) if value else 0)
    return size


class RecordSizes:
    """Bytes per record for the estimate of bytes after a held record: the mean log size (an
    upper bound per record) of each peek's records, keeping the largest recent one. A smaller
    mean lowers it by at most a fifth per peek, so one sample of short records cannot make a
    partition of long ones look far from its ``retention.bytes``."""

    def __init__(self, initial: float = 1024.0) -> None:
        self.per_record = initial

    def observe(self, mean: float) -> float:
        self.per_record = max(self.per_record * 0.8, mean)
        return self.per_record
