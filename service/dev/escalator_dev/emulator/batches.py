"""The Message Batches API's store: batches, their state machine, their limits and the
emulated clock. The HTTP endpoints are in ``batch_routes.py``; each item is answered by the
server's one answering path (``server.answer``), handed in as a function.

What follows the docs (docs/SIMULATOR.md, "Message Batches", cites each line):
- a batch is ``in_progress``, then ``canceling`` if cancelled, then ``ended``; it ends when
  every request has succeeded, errored, been canceled or expired;
- ``request_counts`` shows every request as ``processing`` until the whole batch ends (SDK
  ``MessageBatchRequestCounts``: "This is zero until processing of the entire Message Batch
  has ended"), and their sum is always the batch's size;
- ``expires_at`` is 24 hours after creation: requests not processed by then are ``expired``;
- cancelling stops what has not started: those requests are ``canceled`` once cancellation
  is final, those already processed keep their result;
- results are kept 29 days after creation (``archived_at``), then the results 404;
- a batch of more than 10,000 requests is a 400: the reference says "1 - 10000 elements", the
  guide "100,000 Message requests or 256 MB": the stricter reading;
- batches have their own rate limits: requests per minute to the Batches endpoints, and the
  number of batch requests in the processing queue.

The clock is the wall clock plus an offset that ``POST /_sim/config {"batch_advance_s": N}``
moves forward, so a test can pass the 24-hour expiry or the 29-day retention without waiting.
Items are processed lazily, when a batch is next read: item ``i`` of ``n`` is due
``latency_s * (i + 1) / n`` after creation, and is answered then (or at the first read after).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from escalator_dev.emulator.rules import ApiError, Bucket, bad_request, unit

#: The reference ("1 - 10000 elements") against the guide ("100,000 Message requests"):
#: the stricter.
MAX_REQUESTS = 10_000
MAX_BYTES = 256 * 1024 * 1024
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EXPIRY = timedelta(hours=24)
RETENTION = timedelta(days=29)
#: What ``--batch-fault`` can force on a fraction of items.
BATCH_FAULT_KINDS = ("errored", "expired")
#: Default batch limits: generous, like the real-time ``custom`` tier, so that benchmarks
#: measure Escalator; ``--batch-limits RPM:QUEUE`` sets an organisation's.
DEFAULT_BATCH_LIMITS = (100_000, 10_000_000)


class Hung(Exception):
    """Raised by the answering path for a batch item that will never finish (fault ``hang``)."""


@dataclass(slots=True)
class BatchSettings:
    """How the emulated Batches API behaves (``escalator sim --batch-*``, ``/_sim/config``)."""

    #: Seconds from creation until the last request of a batch is processed.
    latency_s: float = 10.0
    #: Seconds a cancellation stays ``canceling`` before it is final.
    cancel_s: float = 1.0
    rpm: int = DEFAULT_BATCH_LIMITS[0]
    queue: int = DEFAULT_BATCH_LIMITS[1]
    #: {"errored" | "expired": fraction of items}.
    faults: dict[str, float] = field(default_factory=dict)
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES


def parse_batch_fault(spec: str) -> tuple[str, float]:
    """``KIND`` or ``KIND:RATE``, KIND in errored, expired; RATE in [0, 1]."""
    kind, _, rate = spec.partition(":")
    if kind not in BATCH_FAULT_KINDS:
        raise ValueError(
            f"batch fault kind must be one of {', '.join(BATCH_FAULT_KINDS)}, got {kind!r}"
        )
    try:
        value = float(rate) if rate else 1.0
    except ValueError:
        raise ValueError(f"batch fault rate must be a number in [0, 1], got {rate!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"batch fault rate must be in [0, 1], got {rate!r}")
    return kind, value


def parse_batch_limits(spec: str) -> tuple[int, int]:
    """``RPM:QUEUE``: requests per minute to the Batches endpoints, batch requests in the
    processing queue."""
    parts = spec.split(":")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"batch limits must be RPM:QUEUE (positive integers), got {spec!r}")
    return int(parts[0]), int(parts[1])


def rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Clock:
    """The wall clock, moved forward by ``advance_s`` (never back)."""

    advance_s: float = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.advance_s)


@dataclass(slots=True)
class Item:
    custom_id: str
    params: Any
    #: Seconds after the batch's creation when it is processed.
    due_s: float
    #: A forced outcome (``--batch-fault``): "errored", "expired" or None.
    fault: str | None = None
    result: dict[str, Any] | None = None
    hung: bool = False


@dataclass(slots=True)
class Batch:
    id: str
    created_at: datetime
    items: list[Item]
    #: What the items are answered with: the creating request's key, version, betas, and its
    #: ``x-sim-fault`` header (the key is held in memory only, never logged).
    api_key: str
    version: str
    betas: frozenset[str]
    headers: dict[str, str]
    cancel_s: float
    cancel_initiated_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def expires_at(self) -> datetime:
        return self.created_at + EXPIRY

    @property
    def status(self) -> str:
        if self.ended_at is not None:
            return "ended"
        return "canceling" if self.cancel_initiated_at is not None else "in_progress"

    def archived(self, now: datetime) -> bool:
        return now >= self.created_at + RETENTION

    def pending(self) -> int:
        return sum(1 for item in self.items if item.result is None)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if self.ended_at is None:
            counts["processing"] = len(self.items)
            return counts
        for item in self.items:
            assert item.result is not None
            counts[item.result["type"]] += 1
        return counts

    def to_json(self, base_url: str, now: datetime) -> dict[str, Any]:
        archived = self.created_at + RETENTION if self.archived(now) else None
        ended = self.ended_at is not None
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": self.counts(),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "ended_at": rfc3339(self.ended_at),
            "cancel_initiated_at": rfc3339(self.cancel_initiated_at),
            "archived_at": rfc3339(archived),
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }

    def result_lines(self) -> list[bytes]:
        """One JSON line per request, in an order that is not the request order ("Results in
        the file are not guaranteed to be in the same order as requests")."""

        def key(item: Item) -> bytes:
            return hashlib.sha256(f"{self.id}:{item.custom_id}".encode()).digest()

        return [
            orjson.dumps({"custom_id": item.custom_id, "result": item.result}) + b"\n"
            for item in sorted(self.items, key=key)
        ]


#: Answers one item's ``params`` (a Message), or raises :class:`ApiError` or :class:`Hung`.
Answer = Callable[[Batch, Item], Awaitable[dict[str, Any]]]


def _errored(error: ApiError, batch: Batch, item: Item) -> dict[str, Any]:
    digest = hashlib.sha256(f"{batch.id}:{item.custom_id}".encode()).hexdigest()[:20]
    inner: dict[str, Any] = {"type": error.kind, "message": error.message}
    if error.error_code is not None:
        inner["details"] = {"error_code": error.error_code}
    return {
        "type": "errored",
        "error": {"type": "error", "error": inner, "request_id": f"req_sim_{digest}"},
    }


def parse_requests(body: Any, settings: BatchSettings) -> list[tuple[str, Any]]:
    """(custom_id, params) of each request, or the 400 that refuses the whole batch. The
    ``params`` themselves are checked when each request is processed: their errors become
    ``errored`` results, as the guide describes ("validation of the params object ... is
    performed asynchronously")."""
    if not isinstance(body, dict):
        raise bad_request("request body must be an object")
    extra = sorted(set(body) - {"requests"})
    if extra:
        raise bad_request(f"{extra[0]}: Extra inputs are not permitted")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise bad_request("requests: List should have at least 1 item")
    if len(requests) > settings.max_requests:
        raise bad_request(
            f"requests: List should have at most {settings.max_requests} items, not {len(requests)}"
        )
    seen: set[str] = set()
    out: list[tuple[str, Any]] = []
    for i, request in enumerate(requests):
        if not isinstance(request, dict):
            raise bad_request(f"requests.{i}: Input should be an object")
        extra = sorted(set(request) - {"custom_id", "params"})
        if extra:
            raise bad_request(f"requests.{i}.{extra[0]}: Extra inputs are not permitted")
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID_RE.fullmatch(custom_id):
            raise bad_request(
                f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )
        if custom_id in seen:
            raise bad_request(
                f"requests.{i}.custom_id: {custom_id!r} is not unique; each request in a "
                "Message Batch must have a unique custom_id"
            )
        seen.add(custom_id)
        params = request.get("params")
        if not isinstance(params, dict):
            raise bad_request(f"requests.{i}.params: Input should be an object")
        if params.get("stream"):
            # Not a documented item-level error: a batch cannot stream (stricter, whole batch).
            raise bad_request(f"requests.{i}.params.stream: streaming is not supported in batches")
        out.append((custom_id, params))
    return out


@dataclass(slots=True)
class BatchStore:
    """Every batch of the emulated organisation, the clock and the batch rate limits."""

    clock: Clock = field(default_factory=Clock)
    batches: dict[str, Batch] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    bucket: Bucket | None = None

    # -- limits ------------------------------------------------------------------------------
    def admit(self, rpm: int) -> ApiError | None:
        """Charge one request to the Batches endpoints on the per-minute limit (None: fits)."""
        now = time.monotonic()
        if self.bucket is None or self.bucket.limit != rpm:
            self.bucket = Bucket(rpm, rpm, now)
        self.bucket.refill(now)
        wait = self.bucket.wait_s(1.0)
        if wait > 0:
            return ApiError(
                429,
                "rate_limit_error",
                f"This request would exceed your organization's rate limit of {rpm} requests "
                "per minute to the Message Batches API. Please try again later.",
                headers={"retry-after": str(max(1, int(wait + 0.999)))},
            )
        self.bucket.level -= 1.0
        return None

    def queued(self) -> int:
        """Batch requests in the processing queue: not yet processed, in batches not ended."""
        return sum(b.pending() for b in self.batches.values() if b.ended_at is None)

    # -- the state machine -------------------------------------------------------------------
    def create(
        self,
        requests: list[tuple[str, Any]],
        settings: BatchSettings,
        *,
        api_key: str,
        version: str,
        betas: frozenset[str],
        headers: Mapping[str, str],
    ) -> Batch:
        queued = self.queued()
        if queued + len(requests) > settings.queue:
            raise ApiError(
                429,
                "rate_limit_error",
                f"This request would exceed your organization's limit of {settings.queue} "
                f"batch requests in the processing queue ({queued} queued). Please try again "
                "later.",
                headers={"retry-after": str(max(1, int(settings.latency_s + 0.999)))},
            )
        batch_id = "msgbatch_sim_" + secrets.token_hex(12)
        n = len(requests)
        items = []
        for i, (custom_id, params) in enumerate(requests):
            item = Item(custom_id, params, settings.latency_s * (i + 1) / n)
            u, lower = unit(f"{batch_id}:{custom_id}", "batch-fault"), 0.0
            for kind, rate in settings.faults.items():
                if lower <= u < lower + rate:
                    item.fault = kind
                    break
                lower += rate
            items.append(item)
        batch = Batch(
            batch_id,
            self.clock.now(),
            items,
            api_key,
            version,
            betas,
            dict(headers),
            settings.cancel_s,
        )
        self.batches[batch_id] = batch
        return batch

    async def advance(self, batch: Batch, answer: Answer) -> None:
        """Bring ``batch`` up to now: process the items due, then end it if it is done,
        cancelled or past its expiry."""
        async with self.lock:
            await self._advance(batch, answer, self.clock.now())

    async def advance_all(self, answer: Answer) -> None:
        async with self.lock:
            now = self.clock.now()
            for batch in list(self.batches.values()):
                await self._advance(batch, answer, now)

    async def _advance(self, batch: Batch, answer: Answer, now: datetime) -> None:
        if batch.ended_at is not None:
            return
        stop = batch.expires_at
        if batch.cancel_initiated_at is not None:
            stop = min(stop, batch.cancel_initiated_at)  # nothing starts after a cancel
        horizon = min(now, stop)
        for n, item in enumerate(batch.items):
            due = batch.created_at + timedelta(seconds=item.due_s)
            if item.result is not None or item.hung or due > horizon:
                continue
            if n % 200 == 199:
                await asyncio.sleep(0)  # let real-time calls in during a large batch
            if item.fault == "errored":
                error = ApiError(500, "api_error", "Internal server error")
                item.result = _errored(error, batch, item)
            elif item.fault == "expired":
                item.hung = True
                continue
            else:
                try:
                    item.result = {"type": "succeeded", "message": await answer(batch, item)}
                except ApiError as exc:
                    item.result = _errored(exc, batch, item)
                except Hung:
                    item.hung = True
        pending = [item for item in batch.items if item.result is None]
        if not pending:
            # Ended when its last request was processed (all were due by now).
            batch.ended_at = batch.created_at + timedelta(seconds=batch.items[-1].due_s)
            return
        if batch.cancel_initiated_at is not None:
            final = batch.cancel_initiated_at + timedelta(seconds=batch.cancel_s)
            if final < batch.expires_at and now >= final:
                for item in pending:
                    item.result = {"type": "canceled"}
                batch.ended_at = final
                return
        if now >= batch.expires_at:
            for item in pending:
                item.result = {"type": "expired"}
            batch.ended_at = batch.expires_at

    def cancel(self, batch: Batch) -> None:
        if batch.ended_at is not None:
            raise bad_request(f"message batch {batch.id} has ended and cannot be canceled")
        if batch.cancel_initiated_at is None:
            batch.cancel_initiated_at = self.clock.now()

    def delete(self, batch: Batch) -> None:
        if batch.ended_at is None:
            raise bad_request(
                f"message batch {batch.id} is still processing: cancel it before deleting it"
            )
        del self.batches[batch.id]

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"message batch {batch_id} not found")
        return batch

    def page(
        self, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool]:
        """Newest first: up to ``limit`` batches after (older than) ``after_id`` or before
        (newer than) ``before_id``, and whether more remain that way."""
        ordered = list(reversed(self.batches.values()))
        ids = [b.id for b in ordered]
        if after_id is not None:
            start = ids.index(after_id) + 1 if after_id in ids else len(ids)
            chosen = ordered[start:]
            return chosen[:limit], len(chosen) > limit
        if before_id is not None:
            end = ids.index(before_id) if before_id in ids else 0
            chosen = ordered[:end]
            return chosen[-limit:], len(chosen) > limit
        return ordered[:limit], len(ordered) > limit
