"""The operator's HTTP port (observability/health.py): ``/metrics`` in the format the scraper
asks for, ``/healthz`` from the liveness check, ``/readyz`` ready only when every tier has
joined and none is held, and saying why per tier when not."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx

from escalator.observability.health import HealthServer, TierHealth
from escalator.observability.metrics import Metrics
from tests.unit.observability.test_tracing import traced


async def test_metrics_are_openmetrics_only_when_asked_and_tracing_is_on() -> None:
    """/metrics: the Prometheus text format, as before, unless tracing is on and the scraper
    asks for OpenMetrics (the only format with exemplars)."""
    import httpx2 as httpx

    from escalator.observability.health import HealthServer

    asks = {"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"}
    for on in (False, True):
        metrics = Metrics()
        if on:
            traced()[0].link(metrics)
        server = HealthServer(
            metrics, host="127.0.0.1", port=0, live=lambda: True, ready=lambda: []
        )
        async with server, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{server.port}/metrics"
            plain = await client.get(url)
            asked = await client.get(url, headers=asks)
        assert plain.headers["content-type"].startswith("text/plain")
        kind = "application/openmetrics-text" if on else "text/plain"
        assert asked.headers["content-type"].startswith(kind)
        assert asked.text.rstrip().endswith("# EOF") is on


async def _get(server: HealthServer, path: str) -> tuple[int, Any]:
    async with server, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}{path}")
    return response.status_code, response.json()


def _server(live: bool = True, tiers: list[TierHealth] | None = None) -> HealthServer:
    return HealthServer(
        Metrics(), host="127.0.0.1", port=0, live=lambda: live, ready=lambda: list(tiers or [])
    )


async def test_healthz_answers_the_liveness_check() -> None:
    """200 {"live": true} while the process is live, 503 {"live": false} once it is not."""
    assert await _get(_server(live=True), "/healthz") == (200, {"live": True})
    assert await _get(_server(live=False), "/healthz") == (503, {"live": False})


async def test_readyz_is_ready_only_when_every_tier_joined_and_none_is_held() -> None:
    """Every tier joined and none held: 200; one tier not joined, or none reported yet: 503."""
    joined = [TierHealth("cheap", True), TierHealth("strong", True)]
    status, body = await _get(_server(tiers=joined), "/readyz")
    assert status == 200 and body["ready"] is True
    assert [t["tier"] for t in body["tiers"]] == ["cheap", "strong"]
    waiting = [TierHealth("cheap", True), TierHealth("strong", False)]
    status, body = await _get(_server(tiers=waiting), "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["tiers"][1] == {
        "tier": "strong",
        "joined": False,
        "held": None,
        "message": None,
        "held_since": None,
        "hold_ends": None,
    }
    assert await _get(_server(tiers=[]), "/readyz") == (503, {"ready": False, "tiers": []})


async def test_a_held_tier_is_not_ready_and_says_why_since_when_and_until_when() -> None:
    """A joined tier whose traffic is held: 503, with the reason, the API's message and the
    hold's start and announced end as ISO times (UTC, milliseconds)."""
    held = TierHealth(
        "cheap",
        True,
        held="spend_limit",
        message="spend cap reached",
        held_since_s=1_796_889_600.0,
        hold_ends_s=1_798_761_600.0,
    )
    status, body = await _get(_server(tiers=[held]), "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["tiers"] == [
        {
            "tier": "cheap",
            "joined": True,
            "held": "spend_limit",
            "message": "spend cap reached",
            "held_since": "2026-12-10T08:00:00.000Z",
            "hold_ends": "2027-01-01T00:00:00.000Z",
        }
    ]
