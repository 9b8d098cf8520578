"""The deadline arithmetic (kafka/retention.py) against a known truth: a simulated partition
log that rolls and deletes segments by Kafka's own rules.

The simulation follows the broker (UnifiedLog, LogSegment in Kafka 4.x): the active segment
rolls when the next record would take it past ``segment.bytes``, or once ``segment.ms`` has
passed since its first record; every ``log.retention.check.interval.ms`` the oldest segments
go while the log without them keeps at least ``retention.bytes``, and every segment whose
newest timestamp is more than ``retention.ms`` old goes (the active one too, after a roll).
Over many random worlds (rates, record sizes, segment sizes and ages, retention by time, by
bytes, or both) the share of retention a held record has used must be below 1 for as long
as the record exists, and reach 1 no more than one segment (and one check interval) early.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from escalator.kafka.retention import RecordSizes, TopicRetention, record_log_bytes

WORLDS = 300


@dataclass
class Segment:
    base: int
    created_ms: int
    records: list[tuple[int, int, int]] = field(default_factory=list)  # offset, ts, size
    size: int = 0
    max_ts: int = 0


class SimLog:
    """One partition's log, by the broker's rules (no compression: sizes are log bytes)."""

    def __init__(self, retention: TopicRetention) -> None:
        self.r = retention
        self.segments = [Segment(0, 0)]
        self.end = 0
        self.total = 0

    @property
    def start(self) -> int:
        first = self.segments[0]
        return first.records[0][0] if first.records else first.base

    def append(self, now_ms: int, size: int) -> Segment:
        active = self.segments[-1]
        seg_bytes = self.r.segment_bytes or 2**62
        seg_ms = self.r.segment_ms or 2**62
        if active.records and (
            active.size + size > seg_bytes or now_ms - active.records[0][1] > seg_ms
        ):
            active = Segment(self.end, now_ms)
            self.segments.append(active)
        active.records.append((self.end, now_ms, size))
        active.size += size
        active.max_ts = max(active.max_ts, now_ms)
        self.total += size
        self.end += 1
        return active

    def check(self, now_ms: int) -> None:
        """One retention check: size first, then time (the broker's order)."""
        if self.r.retention_bytes is not None and self.total >= self.r.retention_bytes:
            diff = self.total - self.r.retention_bytes
            while len(self.segments) > 1 and diff - self.segments[0].size >= 0:
                gone = self.segments.pop(0)
                diff -= gone.size
                self.total -= gone.size
        if self.r.retention_ms is not None:
            while self.segments and self.segments[0].records:
                if now_ms - self.segments[0].max_ts <= self.r.retention_ms:
                    break
                gone = self.segments.pop(0)
                self.total -= gone.size
                if not self.segments:  # the active segment went: a new, empty one first
                    self.segments.append(Segment(gone.records[-1][0] + 1, now_ms))

    def alive(self, offset: int) -> bool:
        return offset >= self.start


def world(rng: random.Random) -> tuple[TopicRetention, int, float, tuple[int, int]]:
    """A random topic (by time, by bytes, or both), its check interval, the arrival rate per
    second, and the range of record sizes."""
    kind = rng.choice(["time", "bytes", "both"])
    retention_ms = rng.randint(20_000, 200_000) if kind != "bytes" else None
    retention_bytes = rng.randint(20_000, 400_000) if kind != "time" else None
    retention = TopicRetention(
        topic="t",
        retention_ms=retention_ms,
        retention_bytes=retention_bytes,
        segment_bytes=rng.choice([2_000, 10_000, 50_000, 2**30]),
        segment_ms=rng.choice([1_000, 10_000, 60_000, 2**40]),
    )
    check_ms = rng.choice([500, 2_000, 10_000])
    return retention, check_ms, rng.uniform(1, 40), (rng.randint(50, 200), rng.randint(200, 3000))


@pytest.mark.parametrize("seed", range(WORLDS))
def test_a_held_record_is_never_deleted_while_its_share_is_below_one(seed: int) -> None:
    """Known truth: the broker deletes a held record only once its share reaches 1, and then
    the share overshoots by no more than its segment's span (time: newest timestamp; bytes:
    what follows it in the segment) plus one check interval."""
    rng = random.Random(seed)
    retention, check_ms, rate, (small, large) = world(rng)
    log = SimLog(retention)
    now = 0
    held = rng.randint(0, 20)  # the consumer is stuck here from the start
    held_at: tuple[int, Segment] | None = None  # its timestamp and segment, once appended
    after = 0  # bytes after it (truth)
    next_check = check_ms
    appended_since_check = 0
    horizon = 4 * max(retention.retention_ms or 0, 20_000) + 10 * check_ms
    seen = 0
    while now < horizon:
        now += max(1, int(rng.expovariate(rate) * 1000))
        while next_check <= now:
            if held_at is not None:
                ts, segment = held_at
                share = retention.share_used(age_ms=next_check - ts, bytes_after=after)
                span_ms = segment.max_ts - ts
                rest = sum(size for o, _, size in segment.records if o > held)
                log.check(next_check)
                seen += 1
                if not log.alive(held):
                    assert share >= 1.0, "deleted while the arithmetic said it was safe"
                    bound = 0.0
                    if retention.retention_ms is not None:
                        bound = (
                            retention.retention_ms + span_ms + check_ms
                        ) / retention.retention_ms
                    if retention.retention_bytes is not None:
                        bound = max(
                            bound,
                            (retention.retention_bytes + rest + appended_since_check)
                            / retention.retention_bytes,
                        )
                    assert share <= bound + 1e-9, "far later than the arithmetic predicted"
                    return
            appended_since_check = 0
            next_check += check_ms
        size = rng.randint(small, large)
        offset = log.end
        segment = log.append(now, size)
        appended_since_check += size
        if offset == held:
            held_at = (now, segment)
        elif offset > held:
            after += size
    # Never deleted within the horizon (a segment that never rolls): the share said nothing
    # wrong, and the world must have been checked.
    assert seen > 0


def test_the_size_bound_covers_what_the_record_takes_in_the_log() -> None:
    """record_log_bytes is at least the size aiokafka's batch encoder gives a record alone in
    its batch, whatever its key, value and headers, and a batch of many is smaller still."""
    rng = random.Random(7)
    for _ in range(500):
        key = rng.choice([None, rng.randbytes(rng.randint(0, 300))])
        value = rng.choice([None, rng.randbytes(rng.randint(0, 20_000))])
        headers = [
            (f"h{i}" * rng.randint(1, 20), rng.choice([None, rng.randbytes(rng.randint(0, 200))]))
            for i in range(rng.randint(0, 6))
        ]
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 2**24)
        builder.append(0, 1_790_000_000_000, key, value, headers)
        actual = len(builder.build())
        bound = record_log_bytes(len(key or b""), len(value or b""), headers)
        assert actual <= bound <= actual + 36 + 10 * len(headers)
    many = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 2**24)
    for offset in range(50):
        many.append(offset, 1_790_000_000_000 + offset, b"k", b"v" * 100, [])
    assert len(many.build()) <= 50 * record_log_bytes(1, 100)


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        ({}, (7 * 86_400_000, None, True, False)),
        ({"retention.ms": "-1", "retention.bytes": "-1"}, (None, None, True, False)),
        ({"retention.ms": "5000", "retention.bytes": "1048576"}, (5000, 1_048_576, True, False)),
        ({"cleanup.policy": "compact"}, (7 * 86_400_000, None, False, True)),
        ({"cleanup.policy": "compact,delete", "retention.ms": "60000"}, (60_000, None, True, True)),
        ({"retention.ms": "not a number"}, (7 * 86_400_000, None, True, False)),
    ],
)
def test_retention_is_read_from_the_brokers_configs(
    configs: dict[str, str], expected: tuple[int | None, int | None, bool, bool]
) -> None:
    """Kafka's defaults where the broker says nothing; -1 is unlimited; compact never deletes."""
    r = TopicRetention.from_configs("t", configs)
    assert (r.retention_ms, r.retention_bytes, r.deletes, r.compacted) == expected


@pytest.mark.parametrize(
    ("retention_ms", "retention_bytes", "deletes", "age_ms", "after", "share"),
    [
        (10_000, None, True, 5_000, 10**9, 0.5),  # by time only: bytes do not count
        (None, 1_000, True, 10**9, 250, 0.25),  # by bytes only: age does not count
        (10_000, 1_000, True, 2_000, 900, 0.9),  # both: the nearer deadline
        (10_000, 1_000, True, 9_000, 100, 0.9),
        (10_000, None, True, -5_000, 0, 0.0),  # a timestamp in the future: not aged yet
        (10_000, 1_000, False, 10**9, 10**9, 0.0),  # compact only: never deleted
        (None, None, True, 10**9, 10**9, 0.0),  # unlimited
    ],
)
def test_share_used_takes_the_nearer_of_the_two_deadlines(
    retention_ms: int | None,
    retention_bytes: int | None,
    deletes: bool,
    age_ms: int,
    after: int,
    share: float,
) -> None:
    """Table: the share is the larger of age/retention.ms and bytes after/retention.bytes."""
    r = TopicRetention("t", retention_ms, retention_bytes, deletes=deletes)
    assert r.share_used(age_ms=age_ms, bytes_after=after) == pytest.approx(share)


@pytest.mark.parametrize("seed", range(200))
def test_parking_at_half_acts_before_the_broker_with_sampled_record_sizes(seed: int) -> None:
    """Known truth for the estimate: bytes after a held record are estimated as the records
    after it times RecordSizes (the means of peeks of 64 records each, lognormal sizes). With
    ESCALATOR_PARK_AT=0.5 the estimate reaches the mark before the true bytes after it reach
    retention.bytes, in every world."""
    rng = random.Random(10_000 + seed)
    sigma = rng.uniform(0.2, 1.2)
    median = rng.uniform(100, 3000)
    retention_bytes = rng.randint(200_000, 5_000_000)
    sizes = RecordSizes()
    true_after = 0
    count_after = 0
    parked_before_loss = False
    while true_after < retention_bytes:
        peek = [max(20.0, rng.lognormvariate(0, sigma) * median) for _ in range(64)]
        sizes.observe(sum(peek) / len(peek))
        for size in peek:
            true_after += int(size)
            count_after += 1
            estimate = count_after * sizes.per_record / retention_bytes
            if estimate >= 0.5 and true_after < retention_bytes:
                parked_before_loss = True
        if parked_before_loss:
            break
    assert parked_before_loss
