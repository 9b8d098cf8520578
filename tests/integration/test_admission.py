"""Two service processes share one organisation's rate limit (the emulator's buckets) and,
with admission control, stay under it together: no 429s, both get a share."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from escalator.config import load_settings
from escalator.kafka.clients import make_producer
from tests.conftest import running_sim
from tests.integration.harness import make_env, setup_topics
from tests.integration.test_pipeline import TEXTS
from tests.reliability.common import ServiceProcess, sim_stats

pytestmark = pytest.mark.integration
CHEAP = "claude-haiku-5-5"
RPM = 300


async def _used_requests(log: Path) -> float:
    """What one process counted against the requests limit (from its /metrics); 0 before it
    has started."""
    text = await asyncio.to_thread(log.read_bytes)
    port = re.search(rb'"event":"service_started".*?"metrics_port":(\d+)', text)
    if port is None:
        return 0.0
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{int(port.group(1))}/metrics") as response:
            body = await response.text()
    found = re.search(
        r'escalator_ratelimit_used_total\{kind="requests",model="' + CHEAP + r'",tier="cheap"\} '
        r"(\S+)",
        body,
    )
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(240)
async def test_two_processes_share_one_limit_and_stay_under_it(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """300 RPM for the cheap model, two cheap-tier processes, a backlog far larger than the
    limit allows: for 40 s after both answer, the emulator rejects nothing (the admission
    controllers held the calls instead), and each process makes at least a fifth of them."""
    with running_sim(
        "--latency", "uniform:50:150", f"--rate-limit={CHEAP}={RPM}:200000:80000"
    ) as url:
        env = make_env(
            kafka_bootstrap,
            url,
            unique,
            ESCALATOR_SHADOW_RATE="0",
            ESCALATOR_BACKOFF_INITIAL_S="0.5",
            ESCALATOR_BACKOFF_MAX_S="20",
            ESCALATOR_SHUTDOWN_GRACE_S="3",
        )
        settings = load_settings(env)
        await setup_topics(settings)
        producer = make_producer(settings.kafka, linger_ms=5)
        await producer.start()
        try:
            futures = [
                await producer.send(
                    settings.topics.requests,
                    orjson.dumps({"id": f"{unique}-{i}", "text": TEXTS[i % len(TEXTS)]}),
                    key=f"{unique}-{i}".encode(),
                )
                for i in range(3000)
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        logs = [tmp_path / f"cheap{i}.log" for i in range(2)]
        processes = [ServiceProcess(env, "cheap", log) for log in logs]
        for p in processes:
            p.start()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                assert all(p.alive() for p in processes)
                if all([await _used_requests(log) > 0 for log in logs]):
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError("the two processes did not both answer within 120 s")
            before, started = await sim_stats(url), time.monotonic()
            shares_before = [await _used_requests(log) for log in logs]
            await asyncio.sleep(40)
            after, elapsed = await sim_stats(url), time.monotonic() - started
            shares = [
                await _used_requests(log) - b for log, b in zip(logs, shares_before, strict=True)
            ]
        finally:
            for p in processes:
                p.terminate()
    charged = after.get(f"charged_requests:{CHEAP}", 0) - before.get(f"charged_requests:{CHEAP}", 0)
    limited = after.get(f"rate_limited:{CHEAP}", 0) - before.get(f"rate_limited:{CHEAP}", 0)
    print(
        f"two processes, {RPM} RPM: {charged} calls in {elapsed:.0f} s "
        f"({charged / (RPM / 60 * elapsed):.0%} of the limit), {limited} 429s, shares {shares}"
    )
    assert limited == 0
    assert charged <= RPM + RPM / 60 * elapsed  # the bucket's minute plus its refill
    # And the limit was being spent: two idle processes would pass the two lines above.
    assert charged >= 0.5 * RPM / 60 * elapsed, charged
    assert all(s >= 0.2 * charged for s in shares), shares
