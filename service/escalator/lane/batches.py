"""The Message Batches API as the lane sees it (:class:`BatchApi`), and its implementation on
the ``anthropic`` SDK (``client.messages.batches``), with errors translated once, here, as the
real-time adapter translates them (``model.adapter.translate_error``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anthropic
from anthropic.types.messages import MessageBatch

from escalator.errors import EscalatorError
from escalator.model.adapter import translate_error

#: What an item of an ended batch came to (the API's result types).
Kind = Literal["succeeded", "errored", "canceled", "expired"]


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One request's result: its Message when ``succeeded``, else why not."""

    custom_id: str
    kind: Kind
    message: Any = None
    #: ``errored``: the error's type (``api_error``, ``invalid_request_error``...).
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Listed:
    """A batch as the list call shows it."""

    batch_id: str
    #: When the API created it (epoch ms, the API's clock).
    created_ms: int
    ended: bool
    #: How many requests it holds (the sum of its request counts).
    size: int


class BatchGone(EscalatorError):
    """The API knows no batch of this id (404): deleted, its results past their 29 days, or
    created in another workspace than the key's. Its requests will never be answered by it."""


def _gone(batch_id: str, exc: anthropic.AnthropicError) -> EscalatorError:
    """A 404 on a batch's own endpoint is about the batch, not the account (the real-time
    adapter reads a 404 as a retired model, an account-level hold)."""
    if isinstance(exc, anthropic.NotFoundError):
        rid = f" (request-id {exc.request_id})" if exc.request_id else ""
        return BatchGone(f"message batch {batch_id} not found (404){rid}")
    return translate_error(exc)


class BatchApi(Protocol):
    async def create(self, entries: list[bytes]) -> str:
        """Submit the batch's requests, each ``{"custom_id", "params"}`` encoded as JSON (as the
        runner holds them); the batch id. Raises ModelUnavailable (try again later) or
        ModelRejected (the batch as a whole is refused)."""
        ...

    async def ended(self, batch_id: str) -> bool:
        """True once the batch's processing has ended (its results can be read). Raises
        BatchGone when the API knows no such batch."""
        ...

    def results(self, batch_id: str) -> AsyncIterator[ItemResult]:
        """The results of an ended batch, in no particular order. Raises BatchGone when the
        API has none for it (no such batch, or its results past their 29 days)."""
        ...

    async def listed(self, since_ms: int) -> list[Listed]:
        """The batches created at or after ``since_ms`` (epoch ms), newest first."""
        ...


class AnthropicBatches:
    """:class:`BatchApi` over ``anthropic.AsyncAnthropic`` (the real API or the emulator)."""

    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self._client = client

    @property
    def timeout_s(self) -> float | None:
        """The client's timeout of one call (s): the runner gives up a create after it
        (``runner.CREATE_TIMEOUT_S``); the longest phase when it states several."""
        stated = self._client.timeout
        if isinstance(stated, int | float):
            return float(stated)
        if isinstance(stated, anthropic.Timeout):
            phases = [stated.connect, stated.read, stated.write, stated.pool]
            return max((p for p in phases if p is not None), default=None)
        return None

    async def create(self, entries: list[bytes]) -> str:
        # The Create endpoint's body, joined from the entries as they are: the SDK's
        # ``batches.create`` would take them decoded (up to 10,000 texts as Python strings, at
        # up to 4 bytes a character) and encode them all again at once. Its documented way
        # to send a body of our own: ``post`` with ``content`` (the client's headers, retries
        # and errors as for any call).
        body = b'{"requests":[' + b",".join(entries) + b"]}"
        try:
            batch = await self._client.post(
                "/v1/messages/batches",
                content=body,
                cast_to=MessageBatch,
            )  # the client's default headers say application/json
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        return batch.id

    async def ended(self, batch_id: str) -> bool:
        try:
            batch = await self._client.messages.batches.retrieve(batch_id)
        except anthropic.AnthropicError as exc:
            raise _gone(batch_id, exc) from exc
        return batch.processing_status == "ended"

    async def listed(self, since_ms: int) -> list[Listed]:
        out: list[Listed] = []
        try:
            # Newest first ("Most recently created batches are returned first"): stop at the
            # first one older than ``since_ms``; the paginator fetches further pages.
            async for batch in self._client.messages.batches.list(limit=100):
                created = int(batch.created_at.timestamp() * 1000)
                if created < since_ms:
                    break
                c = batch.request_counts
                size = c.processing + c.succeeded + c.errored + c.canceled + c.expired
                out.append(Listed(batch.id, created, batch.processing_status == "ended", size))
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        return out

    async def results(self, batch_id: str) -> AsyncIterator[ItemResult]:
        try:
            lines = await self._client.messages.batches.results(batch_id)
            async for line in lines:
                result = line.result
                if result.type == "succeeded":
                    yield ItemResult(line.custom_id, "succeeded", message=result.message)
                elif result.type == "errored":
                    error = getattr(result.error, "error", None)
                    kind = getattr(error, "type", None) or "api_error"
                    yield ItemResult(line.custom_id, "errored", error=str(kind))
                else:
                    yield ItemResult(line.custom_id, result.type)
        except anthropic.AnthropicError as exc:
            raise _gone(batch_id, exc) from exc
