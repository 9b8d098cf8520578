"""The operator's HTTP port (observability/health.py): ``/metrics`` in the format the scraper
asks for, ``/healthz`` from the liveness check, ``/readyz`` ready only when every tier has
joined and none is held, and saying why per tier when not."""

from __future__ import annotations

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
