"""Batch assembly: which handed-off requests go into which Message Batch, and when it is sent.

The lane's runner (``lane/runner.py``) feeds it the handed-off requests and submits what it
cuts; ``lane/__init__.py`` tells the whole path.

Batches are assembled per model and cut at the documented limits, whichever comes first
(the batch-processing guide and the Create reference; docs/SIMULATOR.md cites both):

- :data:`MAX_REQUESTS`: 10,000 requests. The guide says 100,000, the Create reference
  "1 - 10000 elements": we take the stricter.
- :data:`MAX_BYTES`: 256 MB of request body. We read MB as 10^6 bytes (the stricter of the two
  readings) and keep :data:`ENVELOPE_BYTES` for the body's own JSON around the requests.
- or the age bound: a batch is sent once its oldest member has waited ``max_age_s``
  (ESCALATOR_BATCH_MAX_AGE_S).

``custom_id``: our request ids are up to 256 characters of anything, the API's must match
``^[a-zA-Z0-9_-]{1,64}$`` and be unique within the batch. A member's custom id is built from
its place on the hand-off topic (:func:`custom_id`): unique, at most 31 characters, and the
same every time the record is read, so a batch rebuilt after a crash names its members as the
first one did. (A hash of the request id would not do: two records may carry the same id,
and a duplicate custom id fails the whole batch.) The state topic maps it back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_REQUESTS = 10_000
MAX_BYTES = 256_000_000
#: ``{"requests": [...]}`` and the separators between entries, with room to spare.
ENVELOPE_BYTES = 64 * 1024
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CUSTOM_ID = re.compile(r"^p([0-9]+)o([0-9]+)$")


def custom_id(partition: int, offset: int) -> str:
    """The custom id of the hand-off record at ``partition``/``offset``."""
    if partition < 0 or offset < 0:
        raise ValueError("partition and offset are never negative")
    return f"p{partition}o{offset}"


def place_of(cid: str) -> tuple[int, int]:
    """The hand-off ``(partition, offset)`` a custom id names (ValueError: not one of ours)."""
    match = _CUSTOM_ID.fullmatch(cid)
    if match is None:
        raise ValueError(f"{cid!r} is not a custom id of the batch lane")
    return int(match[1]), int(match[2])


@dataclass(frozen=True, slots=True)
class Member:
    """One handed-off request waiting for its batch."""

    partition: int
    offset: int
    #: The size of its entry in the create request's body (``{"custom_id", "params"}``).
    size_bytes: int
    #: When it joined (epoch seconds): the age bound counts from the oldest member.
    joined_s: float

    @property
    def custom_id(self) -> str:
        return custom_id(self.partition, self.offset)


@dataclass(slots=True)
class Batch:
    """A batch under construction, or cut and ready to submit."""

    model: str
    members: list[Member] = field(default_factory=list)
    size_bytes: int = ENVELOPE_BYTES

    @property
    def oldest_s(self) -> float:
        return min(m.joined_s for m in self.members)


class Assembly:
    """Open batches, one per model; :meth:`add` and :meth:`due` return the batches cut."""

    def __init__(
        self, *, max_age_s: float, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES
    ) -> None:
        if not 1 <= max_requests <= MAX_REQUESTS or not ENVELOPE_BYTES < max_bytes <= MAX_BYTES:
            raise ValueError("limits must be within the documented ones")
        self.max_age_s = max_age_s
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._open: dict[str, Batch] = {}
        self._places: set[tuple[int, int]] = set()

    def add(self, model: str, member: Member) -> list[Batch]:
        """Add ``member`` to its model's open batch; the batches this cut (the open one when
        the member would not fit in it, and the new one if it is full at once). A record read
        twice while its batch is open (a redelivery) joins once; one already in a submitted
        batch is for the state topic to recognise."""
        place = (member.partition, member.offset)
        if place in self._places:
            return []
        if member.size_bytes + ENVELOPE_BYTES > self.max_bytes:
            raise ValueError(f"{member.custom_id}: one request is larger than a whole batch")
        cut: list[Batch] = []
        batch = self._open.get(model)
        if batch is not None and batch.size_bytes + member.size_bytes > self.max_bytes:
            cut.append(self._cut(model))
            batch = None
        if batch is None:
            batch = self._open[model] = Batch(model)
        batch.members.append(member)
        batch.size_bytes += member.size_bytes
        self._places.add(place)
        if len(batch.members) >= self.max_requests:
            cut.append(self._cut(model))
        return cut

    def due(self, now_s: float) -> list[Batch]:
        """The open batches whose oldest member has waited ``max_age_s``: cut now."""
        late = [m for m, b in self._open.items() if now_s - b.oldest_s >= self.max_age_s]
        return [self._cut(model) for model in late]

    def drop(self, partitions: set[int]) -> list[str]:
        """Take the members of these hand-off partitions out of the open batches (their
        partitions were revoked: the next owner batches them); their custom ids."""
        return [m.custom_id for m in self._take(lambda m: m.partition in partitions)]

    def withdraw(self, partition: int, offset: int) -> bool:
        """Take one member out of its open batch (answered another way); False when it is in
        none."""
        if (partition, offset) not in self._places:
            return False
        self._take(lambda m: (m.partition, m.offset) == (partition, offset))
        return True

    def waiting(self) -> int:
        """Requests in open batches (a gauge: requests waiting for their batch)."""
        return sum(len(b.members) for b in self._open.values())

    def _take(self, leaves: Callable[[Member], bool]) -> list[Member]:
        """Take the members ``leaves`` picks out of the open batches, in order; a batch left
        empty is gone."""
        taken: list[Member] = []
        for model, batch in list(self._open.items()):
            kept = [m for m in batch.members if not leaves(m)]
            if len(kept) == len(batch.members):
                continue
            taken += (m for m in batch.members if leaves(m))
            if kept:
                batch.members = kept
                batch.size_bytes = ENVELOPE_BYTES + sum(m.size_bytes for m in kept)
            else:
                del self._open[model]
        for m in taken:
            self._places.discard((m.partition, m.offset))
        return taken

    def _cut(self, model: str) -> Batch:
        batch = self._open.pop(model)
        for m in batch.members:
            self._places.discard((m.partition, m.offset))
        return batch
