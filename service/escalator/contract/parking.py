"""Parked records: held work copied aside before its topic's retention could delete it.

A parked record is the held record byte for byte (key, value, and every header it arrived
with, in order), plus ``x-escalator-*`` headers saying why and where from. It is not a dead
letter: it is valid work waiting for the account (or the model, or the reviewers). ``escalator
parked replay`` sends it back to its source topic with the original headers and
``x-escalator-replay-of: <topic>/<partition>/<offset>`` (the parked record), the dead-letter
replay rule. See docs/CONTRACT.md, "Parked records".
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from escalator.contract.messages import H_PREFIX, REPLAY_HEADER, Headers, iso_from

PARKED_REASON = H_PREFIX + "parked-reason"
HELD_SINCE = H_PREFIX + "held-since"
HELD_SINCE_MS = H_PREFIX + "held-since-ms"
HOLD_ENDS_AT = H_PREFIX + "hold-ends-at"
PARKED_AT = H_PREFIX + "parked-at"
PARKED_AT_MS = H_PREFIX + "parked-at-ms"
RETENTION_USED = H_PREFIX + "retention-used"
SOURCE_TOPIC = H_PREFIX + "source-topic"
SOURCE_PARTITION = H_PREFIX + "source-partition"
SOURCE_OFFSET = H_PREFIX + "source-offset"
SOURCE_TIMESTAMP_MS = H_PREFIX + "source-timestamp-ms"
TIER = H_PREFIX + "tier"
#: Every header parking adds. Replay removes these (and any upstream header of the same name).
PARKED_HEADERS = frozenset(
    {
        PARKED_REASON,
        HELD_SINCE,
        HELD_SINCE_MS,
        HOLD_ENDS_AT,
        PARKED_AT,
        PARKED_AT_MS,
        RETENTION_USED,
        SOURCE_TOPIC,
        SOURCE_PARTITION,
        SOURCE_OFFSET,
        SOURCE_TIMESTAMP_MS,
        TIER,
    }
)


@dataclass(frozen=True, slots=True)
class Why:
    """Why a record was parked: the hold, and how much of its retention it had used."""

    reason: str
    held_since_s: float
    #: When the API says the hold ends (a spend cap), epoch seconds; None when it does not say.
    ends_at_s: float | None
    retention_used: float
    tier: str


def parked_headers(
    original: Iterable[tuple[str, bytes | None]] | None,
    why: Why,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    now_s: float | None = None,
) -> list[tuple[str, bytes | None]]:
    """The record's own headers, untouched and in order, then ours (last, so they win over an
    upstream header of the same name when read back)."""
    now = time.time() if now_s is None else now_s
    ours: list[tuple[str, bytes | None]] = [
        (PARKED_REASON, why.reason.encode()),
        (HELD_SINCE, iso_from(why.held_since_s).encode()),
        (HELD_SINCE_MS, str(int(why.held_since_s * 1000)).encode()),
        (PARKED_AT, iso_from(now).encode()),
        (PARKED_AT_MS, str(int(now * 1000)).encode()),
        (RETENTION_USED, f"{why.retention_used:.3f}".encode()),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
        (SOURCE_TIMESTAMP_MS, str(timestamp_ms).encode()),
        (TIER, why.tier.encode()),
    ]
    if why.ends_at_s is not None:
        ours.append((HOLD_ENDS_AT, iso_from(why.ends_at_s).encode()))
    return [*(original or ()), *ours]


@dataclass(frozen=True, slots=True)
class ParkedInfo:
    """A parked record's headers, read back. A missing header is None; the last one counts."""

    reason: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    source_timestamp_ms: int | None
    tier: str | None
    held_since: str | None
    held_since_ms: int | None
    hold_ends_at: str | None
    parked_at_ms: int | None
    original: list[tuple[str, bytes | None]]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | None]] | None) -> ParkedInfo:
        pairs = list(headers or ())
        ours = {k: bytes(v) for k, v in pairs if k in PARKED_HEADERS and v is not None}

        def text(name: str) -> str | None:
            raw = ours.get(name)
            return None if raw is None else raw.decode("utf-8", "replace")

        def number(name: str) -> int | None:
            try:
                return int(ours[name])
            except (KeyError, ValueError):
                return None

        return cls(
            reason=text(PARKED_REASON) or "?",
            source_topic=text(SOURCE_TOPIC),
            source_partition=number(SOURCE_PARTITION),
            source_offset=number(SOURCE_OFFSET),
            source_timestamp_ms=number(SOURCE_TIMESTAMP_MS),
            tier=text(TIER),
            held_since=text(HELD_SINCE),
            held_since_ms=number(HELD_SINCE_MS),
            hold_ends_at=text(HOLD_ENDS_AT),
            parked_at_ms=number(PARKED_AT_MS),
            original=[(k, v) for k, v in pairs if k not in PARKED_HEADERS],
        )

    def replay_headers(self, origin: str) -> Headers:
        """What a replay sends: the original headers (a null value as an empty one) without
        any earlier ``x-escalator-replay-of``, plus one naming the parked record."""
        kept = [(k, b"" if v is None else bytes(v)) for k, v in self.original if k != REPLAY_HEADER]
        return [*kept, (REPLAY_HEADER, origin.encode())]
