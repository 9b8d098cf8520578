"""Fakes of the lane's boundaries: the Message Batches API and the state topic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from escalator.errors import ModelRejected
from escalator.lane.batches import BatchGone, ItemResult, Listed
from escalator.lane.state import BatchState, open_batches


def encoded(requests: list[dict[str, Any]]) -> list[bytes]:
    """A create's requests as the runner holds them: each entry encoded as JSON."""
    return [orjson.dumps(r) for r in requests]


class FakeBatches:
    """Batches that end when told (``finish``), with results from ``answer(custom_id)``."""

    def __init__(
        self,
        answer: Callable[[str, dict[str, Any]], ItemResult],
        clock: Callable[[], float] = lambda: 1000.0,
    ) -> None:
        self.answer = answer
        self.clock = clock
        self.created: list[list[dict[str, Any]]] = []
        #: When each batch was created (epoch ms), in creation order.
        self.created_ms: list[int] = []
        #: Raised by the next create once the batch is created (a timeout after the API took it).
        self.fail_after: Exception | None = None
        self.lists = 0
        self.finished: set[str] = set()
        self.reject = False
        self.polls = 0
        #: Raised by the next create, once.
        self.fail: Exception | None = None
        #: Batches the API no longer knows (BatchGone when polled or read).
        self.gone: set[str] = set()

    async def create(self, entries: list[bytes]) -> str:
        requests = [orjson.loads(e) for e in entries]  # as the API reads the body
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        if self.reject:
            raise ModelRejected("too many", reason="invalid_request_error")
        self.created.append(requests)
        self.created_ms.append(int(self.clock() * 1000))
        if self.fail_after is not None:
            fail, self.fail_after = self.fail_after, None
            raise fail
        return f"b{len(self.created)}"

    def finish(self, batch_id: str) -> None:
        self.finished.add(batch_id)

    async def ended(self, batch_id: str) -> bool:
        self.polls += 1
        if batch_id in self.gone:
            raise BatchGone(f"message batch {batch_id} not found (404)")
        return batch_id in self.finished

    async def results(self, batch_id: str) -> AsyncIterator[ItemResult]:
        if batch_id in self.gone:
            raise BatchGone(f"message batch {batch_id} not found (404)")
        for r in self.created[int(batch_id[1:]) - 1]:
            yield self.answer(r["custom_id"], r["params"])

    async def listed(self, since_ms: int) -> list[Listed]:
        self.lists += 1
        out = [
            Listed(f"b{i + 1}", at, f"b{i + 1}" in self.finished, len(self.created[i]))
            for i, at in enumerate(self.created_ms)
            if at >= since_ms
        ]
        return out[::-1]


class FakeState:
    """The compacted state topic as a list of (key, value) records, and the lane group's
    committed offsets (set by the test, as the engine's commits would)."""

    def __init__(self, records: list[tuple[bytes, bytes | None]] | None = None) -> None:
        self.records = records or []
        #: The lane group's committed offset per hand-off partition.
        self.offsets: dict[int, int] = {}
        #: Raised by the next reads, one each, in order.
        self.read_fails: list[Exception] = []

    async def read(self) -> dict[bytes, BatchState]:
        if self.read_fails:
            raise self.read_fails.pop(0)
        return open_batches(self.records)

    async def write(self, state: BatchState) -> None:
        self.records.append((state.key, state.value()))

    async def close(self, key: bytes) -> None:
        self.records.append((key, None))

    async def committed(self) -> dict[int, int]:
        return dict(self.offsets)
