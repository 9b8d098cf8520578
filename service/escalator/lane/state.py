"""The lane's state record: one per batch on a compacted topic, what a restarted worker reads
to resume polling the same batch instead of submitting (and paying for) a new one.

Not wired yet (issue 24, slice 3; the plan is in ``lane/__init__.py``). A batch's record is
written twice under one key: as an *intent* (members, no batch id) before the create call,
then with the batch id once the API has answered; a tombstone closes it once every member is
routed. Members are custom ids (hand-off places, ``assembly.custom_id``), not texts: 10,000
of them take about 150 kB, under Kafka's default 1 MB record limit, where the texts of a
batch may take 256 MB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from escalator.lane.assembly import MAX_REQUESTS, place_of

STATE_VERSION = 1


class NotAState(ValueError):
    """A record of the state topic that is not a batch's state."""


@dataclass(frozen=True, slots=True)
class BatchState:
    """One batch of the lane, as recorded."""

    model: str
    #: Custom ids, in submission order: each names its hand-off record.
    members: tuple[str, ...]
    #: When the intent was written (epoch ms): with the first member, the record's key.
    intent_ms: int
    #: The API's batch id; None while only the intent is recorded.
    batch_id: str | None = None
    submitted_ms: int | None = None

    @property
    def key(self) -> bytes:
        """The same for the intent, the submitted record and the tombstone of one batch."""
        return f"{self.model}/{self.members[0]}/{self.intent_ms}".encode()

    def submitted(self, batch_id: str, at_ms: int) -> BatchState:
        if self.batch_id is not None:
            raise ValueError(f"already submitted as {self.batch_id}")
        return BatchState(self.model, self.members, self.intent_ms, batch_id, at_ms)

    def value(self) -> bytes:
        return orjson.dumps(
            {
                "state_version": STATE_VERSION,
                "model": self.model,
                "members": self.members,
                "intent_ms": self.intent_ms,
                "batch_id": self.batch_id,
                "submitted_ms": self.submitted_ms,
            }
        )

    @classmethod
    def from_value(cls, raw: bytes) -> BatchState:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise NotAState(f"not JSON ({exc})") from exc
        if not isinstance(data, Mapping) or data.get("state_version") != STATE_VERSION:
            raise NotAState(f"not an object with state_version {STATE_VERSION}")
        model, members, batch_id = data.get("model"), data.get("members"), data.get("batch_id")
        if not isinstance(model, str) or not model:
            raise NotAState("no model")
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_REQUESTS:
            raise NotAState(f"members must be a list of 1 to {MAX_REQUESTS} custom ids")
        for cid in members:
            try:
                place_of(cid if isinstance(cid, str) else "")
            except ValueError as exc:
                raise NotAState(str(exc)) from exc
        if len(set(members)) != len(members):
            raise NotAState("a custom id appears twice")
        if batch_id is not None and not (isinstance(batch_id, str) and batch_id):
            raise NotAState("batch_id must be a non-empty string or null")
        submitted = _ms(data.get("submitted_ms"))
        if (batch_id is None) != (submitted is None):
            raise NotAState("batch_id and submitted_ms go together")
        intent = _ms(data.get("intent_ms"))
        if intent is None:
            raise NotAState("no intent_ms")
        return cls(model, tuple(members), intent, batch_id, submitted)


def _ms(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def open_batches(records: list[tuple[bytes, bytes | None]]) -> dict[bytes, BatchState]:
    """The batches still open after reading the state topic from the start: the last record
    per key wins (as compaction keeps it), a tombstone closes its batch. A record that is not
    a state raises :class:`NotAState`: the topic is the lane's alone."""
    out: dict[bytes, BatchState] = {}
    for key, value in records:
        if value is None:
            out.pop(key, None)
            continue
        state = BatchState.from_value(value)
        if state.key != key:
            raise NotAState(f"key {key!r} is not the state's own ({state.key!r})")
        out[key] = state
    return out
