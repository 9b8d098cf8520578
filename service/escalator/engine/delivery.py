"""What happens to a record's outputs and its offset: the :class:`Delivery` protocol.

The worker (``worker.py``) polls, dispatches under its limits, follows rebalances and drains;
it never asks which guarantee is in force. A delivery strategy owns the rest: how outputs
reach the broker, when an offset counts as committed, and what a partition's loss costs.

- :class:`~escalator.engine.at_least_once.AtLeastOnce`: produce, await every
  acknowledgement (resending until acknowledged), commit offsets at the watermark.
- :class:`~escalator.engine.transactional.Transactional`: hold outputs; one transactional
  producer per input partition commits them with the offset, so a crash repeats nothing.

The service picks one at construction (``ESCALATOR_PROCESSING_GUARANTEE``), as aiokafka picks
its group coordinator and quixstreams its checkpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextvars import Context
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from escalator.contract.messages import Headers
from escalator.observability.metrics import Metrics, TierSeries


class Output(NamedTuple):
    """One record to produce for an input record. A tuple: a frozen dataclass's __init__
    cost a microsecond per output on the per-record path (B1 in BENCHMARKS.md). A value or a
    header value may be null only on a parked copy (``engine/parking.py``), which keeps the
    record byte for byte."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers | list[tuple[str, bytes | None]] = []


class Done(NamedTuple):
    """A record the handler is done with: its offset and outputs, handed to the strategy with
    the others of its partition that finished in the same turn of the event loop."""

    offset: int
    outputs: list[Output]
    #: When the worker dispatched it (``perf_counter``), for the processing histogram; None for
    #: a parked copy, which is not counted as processed.
    started: float | None = None
    #: The context its handler ran in, when it ran as a task (tracing reads its span there).
    context: Context | None = None


class PartitionTracker:
    """Offsets dispatched on one partition, and the watermark below which all are done."""

    __slots__ = ("committable", "committed", "done", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.committable: int | None = None
        self.committed: int | None = None

    @property
    def in_flight(self) -> int:
        return len(self.pending) - len(self.done)

    def add(self, offset: int) -> None:
        self.pending.append(offset)

    def extend(self, offsets: Iterable[int]) -> None:
        """Offsets dispatched together (a fetched batch), in order."""
        self.pending.extend(offsets)

    def complete(self, offset: int) -> int:
        """Mark ``offset`` done; return how many offsets became committable."""
        return self.complete_many((offset,))

    def complete_many(self, offsets: Iterable[int]) -> int:
        """Mark these offsets done; return how many offsets became committable."""
        self.done.update(offsets)
        popped = 0
        while self.pending and self.pending[0] in self.done:
            first = self.pending.popleft()
            self.done.discard(first)
            self.committable = first + 1
            popped += 1
        return popped

    def to_commit(self) -> int | None:
        if self.committable is not None and self.committable != self.committed:
            return self.committable
        return None


@dataclass(frozen=True, slots=True)
class Bound:
    """What a strategy sees of its worker (given once, by :meth:`Delivery.bind`)."""

    tier: str
    consumer: AIOKafkaConsumer
    #: The worker's trackers, one per owned partition (read-only for the strategy).
    trackers: Mapping[TopicPartition, PartitionTracker]
    metrics: Metrics
    series: TierSeries
    max_in_flight: int
    #: Capacity may have freed up: the poll loop should look again.
    wake: Callable[[], None]
    #: Let a partition go now (it was fenced): the worker drops it and calls ``release``.
    drop: Callable[[TopicPartition, str], None]
    #: The strategy cannot go on (a partition's producer will not start): the worker stops
    #: (drain, final commit) and ``run`` raises this error, as for a failed assignment, so
    #: the process exits and the orchestrator restarts it. The strategy logs why first.
    fail: Callable[[BaseException], None]

    def due(self, only: set[TopicPartition] | None) -> dict[TopicPartition, int]:
        """The offset to commit per partition, where the watermark moved past the last one."""
        due: dict[TopicPartition, int] = {}
        for tp, tracker in self.trackers.items():
            if only is not None and tp not in only:
                continue
            offset = tracker.to_commit()
            if offset is not None:
                due[tp] = offset
        return due


class Delivery(Protocol):
    """Owns a record's outputs and its offset, from the handler's answer to the commit."""

    @property
    def not_ready(self) -> AbstractSet[TopicPartition]:
        """Assigned partitions that may not be fetched yet (their producer is starting)."""
        ...

    def bind(self, worker: Bound) -> None:
        """Called once by the worker that uses this strategy."""
        ...

    @property
    def awaiting_ack(self) -> int:
        """Records whose outputs are sent and not yet acknowledged (a gauge)."""
        ...

    def uncommitted(self) -> int:
        """Records done (or answered) below or above the watermark, offset not committed,
        beyond the worker's pending ones: with those, what a crash would make us redo."""
        ...

    def reserved(self) -> int:
        """How much of the worker's ``max_uncommitted`` budget this strategy holds now."""
        ...

    async def deliver(
        self,
        tp: TopicPartition,
        tracker: PartitionTracker,
        done: Sequence[Done],
        *,
        at_once: bool = False,
    ) -> None:
        """Take the outputs of these records of ``tp`` (a batch, in any order). On return
        they may all count as done. ``at_once``: they were answered together when dispatched
        (no model call: tier 0, dead letters, parked copies), not as they finished."""
        ...

    def advanced(self, tp: TopicPartition, popped: int) -> None:
        """The watermark of ``tp`` moved up by ``popped`` records."""
        ...

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit every owned partition (or ``only`` these) up to its watermark."""
        ...

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Partitions are ours (the worker's trackers exist). Raising stops the worker."""
        ...

    def revoking(self, partitions: set[TopicPartition]) -> None:
        """Partitions are being taken away: called first, before the final commit."""
        ...

    def release(self, tp: TopicPartition, reason: str) -> set[int]:
        """The worker let ``tp`` go. Return offsets, beyond its pending ones, to be redone."""
        ...

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Called last when partitions were revoked and released."""
        ...

    async def close(self) -> None:
        """The worker stops: let go of every resource."""
        ...
