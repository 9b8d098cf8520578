"""A screenshot of one escalated request's trace in Jaeger's UI, for docs/ (issue 26).

Not a test: it makes a picture. The tracing test (``test_tracing.py``) checks the same spans
through Jaeger's query API. ``.tools/bin/jaeger`` has no UI: Jaeger embeds its UI's assets
only in release builds, and the UI's sources (github.com/jaegertracing/jaeger-ui) are not on
the registries this machine reaches. Build jaeger-ui v1.75.0 from a copy of its sources
(README, "Development", Jaeger) and give its ``packages/jaeger-ui/build`` with ``--ui``:
Jaeger serves it from there (``jaeger_query.ui.assets_path``).

    .venv/bin/python -m tests.integration.trace_screenshot --ui DIR [--out docs/trace-escalated.png]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx2 as httpx
import orjson
from playwright.async_api import async_playwright

from escalator_dev.emulator import server as sim
from escalator_dev.kafka_local import LocalKafkaCluster
from tests.integration.harness import collect, make_env, produce, running_service
from tests.integration.jaeger import running_jaeger

ESCALATED = "He said they would hurt them if they did not pay."
CHROMIUM = "/usr/bin/chromium"


async def one_escalated_trace(bootstrap: str, sim_url: str, otlp: str) -> str:
    """Run both tiers with tracing on, send one request that escalates; its trace id."""
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
        "OTEL_SERVICE_NAME": "escalator",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    os.environ.update(otel)  # the OpenTelemetry SDK reads the process environment itself
    env = make_env(
        bootstrap, sim_url, f"shot{uuid.uuid4().hex[:6]}", ESCALATOR_SHADOW_RATE="0", **otel
    )
    async with running_service(env, ["cheap", "strong"]):
        await produce(
            bootstrap,
            env["ESCALATOR_REQUESTS_TOPIC"],
            [orjson.dumps({"id": "escalated-1", "text": ESCALATED})],
        )
        got = await collect(
            bootstrap, [env["ESCALATOR_RESULTS_TOPIC"]], lambda c: len(c.records) >= 1
        )
    (record,) = got.records
    assert orjson.loads(record.value)["escalated"], "premise: the request escalates"
    (traceparent,) = [bytes(v).decode() for k, v in record.headers if k == "traceparent"]
    return traceparent.split("-")[1]


async def wait_for_trace(query: str, trace_id: str) -> int:
    """Spans of the trace once their number stops growing (the exporter sends in batches)."""
    seen, steady = -1, 0
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            r = await client.get(f"{query}/api/traces/{trace_id}", timeout=5)
            spans = sum(len(t["spans"]) for t in r.json().get("data") or []) if r.is_success else 0
            steady = steady + 1 if spans == seen and spans else 0
            if steady >= 3:
                return spans
            seen = spans
            await asyncio.sleep(0.5)
    raise SystemExit(f"trace {trace_id} did not settle in Jaeger ({seen} spans)")


async def screenshot(url: str, out: Path) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 760})
            await page.goto(url)
            await page.wait_for_selector("text=process", timeout=30_000)
            # Open the strong tier's process span and the cheap model's call: their attributes
            # (the escalation reason, threshold version, tokens, cost) are what one looks for.
            for operation in ("process esc-", "chat claude-haiku"):
                await page.locator(f"text={operation}").first.click()
            await page.wait_for_timeout(1000)
            await page.screenshot(path=str(out), full_page=True)
        finally:
            await browser.close()


async def main(ui: Path, out: Path) -> None:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        cluster = LocalKafkaCluster(Path(tmp) / "kafka", nodes=1)
        await asyncio.to_thread(cluster.start)
        stack.callback(cluster.stop)
        proc, sim_url = sim.spawn()
        stack.callback(sim.terminate, proc)
        jaeger = stack.enter_context(running_jaeger(Path(tmp), ui_assets=ui))
        trace_id = await one_escalated_trace(cluster.bootstrap_servers, sim_url, jaeger.otlp)
        spans = await wait_for_trace(jaeger.query, trace_id)
        await screenshot(f"{jaeger.query}/trace/{trace_id}", out)
        print(f"{out}: trace {trace_id}, {spans} spans, in Jaeger's UI ({ui})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", type=Path, required=True, help="a jaeger-ui build directory")
    parser.add_argument("--out", type=Path, default=Path("docs/trace-escalated.png"))
    args = parser.parse_args()
    if not (args.ui / "index.html").is_file():
        sys.exit(f"--ui {args.ui}: no index.html there (a jaeger-ui build directory)")
    asyncio.run(main(args.ui.resolve(), args.out))
