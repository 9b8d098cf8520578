"""Security: the API key never leaves the process except in the API request itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from escalator.config import load_settings
from tests.conftest import running_sim
from tests.integration.harness import make_env, produce, setup_topics, wait_for
from tests.reliability.common import ServiceProcess

pytestmark = pytest.mark.integration

SENTINEL = "sk-ant-api03-SENTINEL-" + "k3y" * 12


async def _everything_on(bootstrap: str, topics: list[str]) -> bytes:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    chunks: list[bytes] = []
    try:
        for _ in range(6):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    chunks += [r.key or b"", r.value or b""]
                    chunks += [k.encode() + v for k, v in (r.headers or ())]
    finally:
        await consumer.stop()
    return b"\n".join(chunks)


@pytest.mark.timeout(300)
async def test_api_key_never_appears_in_logs_metrics_outputs_or_errors(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    with running_sim("--fault", "500:0.3", "--fault", "429:0.1") as sim_url:
        env = make_env(
            kafka_bootstrap,
            sim_url,
            unique,
            ANTHROPIC_API_KEY=SENTINEL,
            ESCALATOR_LOG_LEVEL="DEBUG",
            ESCALATOR_LOG_TEXT="true",
            ESCALATOR_METRICS_PORT="0",
            ESCALATOR_INVALID_ANSWER_ATTEMPTS="1",
        )
        settings = load_settings(env)
        await setup_topics(settings)
        texts = [
            "A lovely afternoon in the park.",
            "He said he would hurt them. [[sim:bad-label]]",  # dead-lettered: invalid answers
            "Server trouble for this one. [[sim:500]]",  # retried, then given up on
            "Plans to build a bomb and kill people.",
        ]
        values = [orjson.dumps({"id": f"k{i}", "text": t}) for i, t in enumerate(texts)]
        values += [b"not json", b'{"id": 5}']
        await produce(kafka_bootstrap, settings.topics.requests, values)
        log_path = tmp_path / "service.log"
        service = ServiceProcess(env, "all", log_path)
        service.start()
        try:
            port = await _metrics_port(log_path)
            async with aiohttp.ClientSession() as http:
                await wait_for(lambda: _dead_letters(http, port), timeout_s=120)
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    metrics = await response.read()
                async with http.get(f"{sim_url}/_sim/config") as response:
                    stats = (await response.json())["stats"]
        finally:
            await asyncio.to_thread(service.terminate, 60)
    emitted = await _everything_on(
        kafka_bootstrap,
        [
            settings.topics.results,
            settings.topics.escalations,
            settings.topics.dead_letter,
            settings.topics.decisions,
        ],
    )
    logs = await asyncio.to_thread(log_path.read_bytes)
    assert stats.get("with_api_key", 0) > 0, "the key was never used: the test proves nothing"
    assert b'"event":"dead_letter"' in logs and b"escalator_retries_total" in metrics
    for where, blob in (("logs", logs), ("metrics", metrics), ("topics", emitted)):
        assert SENTINEL.encode() not in blob, f"API key leaked into {where}"
        assert SENTINEL[-20:].encode() not in blob, f"part of the API key leaked into {where}"


async def _metrics_port(log_path: Path) -> int:
    for _ in range(240):
        for line in (await asyncio.to_thread(log_path.read_bytes)).splitlines():
            if b'"service_started"' in line:
                return int(orjson.loads(line)["metrics_port"])
        await asyncio.sleep(0.5)
    tail = (await asyncio.to_thread(log_path.read_text))[-2000:]
    raise AssertionError("service did not start: " + tail)


async def _dead_letters(http: aiohttp.ClientSession, port: int) -> bool:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("escalator_dead_letters_total{")
    )
    return total >= 3  # not json, wrong type, invalid answers
