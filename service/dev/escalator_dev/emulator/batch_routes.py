"""The Message Batches API's endpoints (aiohttp), over the store in ``batches.py``.

    POST   /v1/messages/batches                   create
    GET    /v1/messages/batches                   list (newest first; limit, after_id, before_id)
    GET    /v1/messages/batches/{id}              retrieve
    POST   /v1/messages/batches/{id}/cancel       cancel
    DELETE /v1/messages/batches/{id}              delete (only once ended)
    GET    /v1/messages/batches/{id}/results      results, JSONL (only once ended; 29 days)

Every endpoint authenticates as ``POST /v1/messages`` does and counts against the batch
requests-per-minute limit. What the endpoints need from the emulator (authentication, the
error shape, request ids, the one answering path) comes in through :class:`Host`, which
``server.py`` implements: this module does not import the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from escalator_dev.emulator.batches import Batch, BatchSettings, BatchStore, Item, parse_requests
from escalator_dev.emulator.rules import ApiError, bad_request


class Host(Protocol):
    """The emulator, as the batch endpoints see it."""

    @property
    def store(self) -> BatchStore: ...

    @property
    def settings(self) -> BatchSettings: ...

    def request_id(self) -> str: ...

    def count(self, stat: str) -> None: ...

    def authenticate(self, request: web.Request) -> tuple[str, str, frozenset[str]]:
        """(API key, API version, betas) of a request allowed to call, or raise ApiError."""
        ...

    def error_response(self, error: ApiError, request_id: str) -> web.Response: ...

    async def answer(
        self,
        params: Any,
        headers: Mapping[str, str],
        api_key: str,
        version: str,
        betas: frozenset[str],
    ) -> dict[str, Any]:
        """One item's Message, through the same path as ``POST /v1/messages``."""
        ...


HOST = web.AppKey("batch_host", Host)
#: (API key, API version, betas) of the authenticated caller.
Auth = tuple[str, str, frozenset[str]]
Handler = Callable[[web.Request, Host, Auth], Awaitable[web.StreamResponse]]
#: The headers of a creating request that its items are answered with.
ITEM_HEADERS = ("x-sim-fault",)


def _endpoint(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Authenticate, charge the batch RPM limit, and turn an ApiError into the API's shape."""

    async def run(request: web.Request) -> web.StreamResponse:
        host = request.app[HOST]
        request_id = host.request_id()
        host.count("batch_api_requests")
        try:
            auth = host.authenticate(request)
            limited = host.store.admit(host.settings.rpm)
            if limited is not None:
                host.count("batch_rate_limited")
                raise limited
            response = await handler(request, host, auth)
        except ApiError as exc:
            host.count(f"batch_status:{exc.status}")
            return host.error_response(exc, request_id)
        response.headers["request-id"] = request_id
        return response

    return run


def _answerer(host: Host) -> Callable[[Batch, Item], Awaitable[dict[str, Any]]]:
    async def answer(batch: Batch, item: Item) -> dict[str, Any]:
        return await host.answer(
            item.params, batch.headers, batch.api_key, batch.version, batch.betas
        )

    return answer


def _base_url(request: web.Request) -> str:
    return str(request.url.origin())


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _batch(request: web.Request, host: Host) -> Batch:
    batch = host.store.get(request.match_info["batch_id"])
    await host.store.advance(batch, _answerer(host))
    return batch


async def create(request: web.Request, host: Host, auth: Auth) -> web.StreamResponse:
    api_key, version, betas = auth
    limit = host.settings.max_bytes
    if (request.content_length or 0) > limit:
        raise _too_large()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large() from None
    if len(raw) > limit:
        raise _too_large()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("request body is not valid JSON") from None
    requests = parse_requests(body, host.settings)
    await host.store.advance_all(_answerer(host))  # the queue counts what is still pending
    headers = {k: v for k in ITEM_HEADERS if (v := request.headers.get(k)) is not None}
    batch = host.store.create(
        requests, host.settings, api_key=api_key, version=version, betas=betas, headers=headers
    )
    host.count("batches_created")
    return _json(batch.to_json(_base_url(request), host.store.clock.now()))


def _too_large() -> ApiError:
    # Errors: 413 request_too_large; the guide: a batch is limited to 256 MB.
    return ApiError(
        413, "request_too_large", "Request exceeds the maximum allowed number of bytes."
    )


async def retrieve(request: web.Request, host: Host, auth: Auth) -> web.StreamResponse:
    batch = await _batch(request, host)
    return _json(batch.to_json(_base_url(request), host.store.clock.now()))


async def list_batches(request: web.Request, host: Host, auth: Auth) -> web.StreamResponse:
    query = request.query
    raw_limit = query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise bad_request("limit: Input should be an integer from 1 to 1000")
    await host.store.advance_all(_answerer(host))
    page, more = host.store.page(int(raw_limit), query.get("after_id"), query.get("before_id"))
    now, base = host.store.clock.now(), _base_url(request)
    data = [b.to_json(base, now) for b in page]
    return _json(
        {
            "data": data,
            "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


async def cancel(request: web.Request, host: Host, auth: Auth) -> web.StreamResponse:
    batch = await _batch(request, host)
    host.store.cancel(batch)
    host.count("batches_canceled")
    return _json(batch.to_json(_base_url(request), host.store.clock.now()))


async def delete(request: web.Request, host: Host, auth: Auth) -> web.StreamResponse:
    batch = await _batch(request, host)
    host.store.delete(batch)
    return _json({"id": batch.id, "type": "message_batch_deleted"})


async def results(request: web.Request, host: Host, auth: Auth) -> web.StreamResponse:
    batch = await _batch(request, host)
    if batch.ended_at is None:
        # Not documented (results_url is null until the batch ends): a 400, as for delete.
        raise bad_request(f"message batch {batch.id} has not finished processing")
    if batch.archived(host.store.clock.now()):
        # "Batch results are available for 29 days after creation"; then not downloadable.
        raise ApiError(
            404, "not_found_error", f"the results of message batch {batch.id} have expired"
        )
    body = b"".join(batch.result_lines())
    return web.Response(body=body, content_type="application/binary")


def install(app: web.Application, host: Host) -> None:
    """Add the Batches endpoints to ``app``, served by ``host``."""
    app[HOST] = host
    app.router.add_post("/v1/messages/batches", _endpoint(create))
    app.router.add_get("/v1/messages/batches", _endpoint(list_batches))
    app.router.add_get("/v1/messages/batches/{batch_id}", _endpoint(retrieve))
    app.router.add_delete("/v1/messages/batches/{batch_id}", _endpoint(delete))
    app.router.add_post("/v1/messages/batches/{batch_id}/cancel", _endpoint(cancel))
    app.router.add_get("/v1/messages/batches/{batch_id}/results", _endpoint(results))
