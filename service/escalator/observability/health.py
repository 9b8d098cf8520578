"""The operator's HTTP port: ``/metrics`` (Prometheus), ``/healthz`` (liveness) and
``/readyz`` (readiness: every tier has joined its group, and no tier's traffic is held
because the account cannot call its model). A not-ready answer says why, per tier, with when
the hold began and, where the API says (a spend cap), when it ends::

    {"ready": false, "tiers": [{"tier": "cheap", "joined": true, "held": "spend_limit",
     "message": "spend cap reached (429 ...)", "held_since": "2026-12-10T08:00:00.000Z",
     "hold_ends": "2027-01-01T00:00:00.000Z"}]}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)

from escalator.contract.messages import iso_from
from escalator.observability.metrics import Metrics

OPENMETRICS = "application/openmetrics-text"


@dataclass(frozen=True, slots=True)
class TierHealth:
    tier: str
    joined: bool
    #: The api_blocked reason while the account holds this tier's traffic, else None.
    held: str | None = None
    message: str | None = None
    #: When the hold began, and when the API says it ends (epoch seconds; None: not said).
    held_since_s: float | None = None
    hold_ends_s: float | None = None

    @property
    def ready(self) -> bool:
        return self.joined and self.held is None


class HealthServer:
    def __init__(
        self,
        metrics: Metrics,
        *,
        host: str,
        port: int,
        live: Callable[[], bool],
        ready: Callable[[], list[TierHealth]],
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._live = live
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = port

    async def __aenter__(self) -> HealthServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics_view(self, request: web.Request) -> web.Response:
        # Exemplars exist only in OpenMetrics: served to a scraper that asks for it, when
        # tracing is on (otherwise the text format, as before).
        if self._metrics.exemplars and OPENMETRICS in request.headers.get("Accept", ""):
            body = self._metrics.exposition(openmetrics=True)
            return web.Response(body=body, headers={"Content-Type": OPENMETRICS_CONTENT_TYPE})
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        ok = self._live()
        return web.json_response({"live": ok}, status=200 if ok else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        tiers = self._ready()
        ok = bool(tiers) and all(t.ready for t in tiers)
        body = {
            "ready": ok,
            "tiers": [
                {
                    "tier": t.tier,
                    "joined": t.joined,
                    "held": t.held,
                    "message": t.message,
                    "held_since": _iso(t.held_since_s),
                    "hold_ends": _iso(t.hold_ends_s),
                }
                for t in tiers
            ],
        }
        return web.json_response(body, status=200 if ok else 503)


def _iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else iso_from(epoch_s)
