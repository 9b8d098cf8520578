"""Scenario 1: SIGKILL a cheap-tier instance every few seconds, restart it, lose nothing.

Two cheap-tier processes share the group, one strong-tier process runs beside them. The
whole backlog is produced first; then, until every id has its result, one cheap instance is
killed (SIGKILL: no drain, no commit) and restarted, alternately. At-least-once: 0 lost, and
the duplicates each kill causes stay within the worker's duplicate window. Exactly-once: a
read_committed reader sees every id exactly once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from escalator.config import load_settings
from tests.conftest import running_sim
from tests.integration.harness import make_env, produce, setup_topics
from tests.reliability.common import (
    ServiceProcess,
    ledger_row,
    read_ledger,
    report,
    request_values,
    scaled,
)

MAX_IN_FLIGHT = 32
MAX_UNCOMMITTED = 128
#: What one crash can make the group redo: uncommitted records, plus one commit batch.
WINDOW = MAX_UNCOMMITTED + MAX_IN_FLIGHT


async def crash_loop(
    bootstrap: str, unique: str, tmp_path: Path, guarantee: str, n: int, interval_s: float
) -> None:
    with running_sim("--latency", "uniform:5:30") as sim_url:
        env = make_env(
            bootstrap,
            sim_url,
            unique,
            ESCALATOR_TOPIC_PARTITIONS="6",
            ESCALATOR_SHADOW_RATE="0",
            ESCALATOR_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
            ESCALATOR_MAX_UNCOMMITTED=str(MAX_UNCOMMITTED),
            ESCALATOR_SHUTDOWN_GRACE_S="5",
            ESCALATOR_SESSION_TIMEOUT_MS="6000",
            ESCALATOR_PROCESSING_GUARANTEE=guarantee,
            ESCALATOR_LOG_LEVEL="INFO",
        )
        settings = load_settings(env)
        await setup_topics(settings)
        ids = {f"{unique}-{i}" for i in range(n)}
        await produce(bootstrap, settings.topics.requests, request_values(n, unique))
        strong = ServiceProcess(env, "strong", tmp_path / "strong.log")
        cheap = [ServiceProcess(env, "cheap", tmp_path / f"cheap-{i}.log") for i in (0, 1)]
        for proc in (strong, *cheap):
            proc.start()
        isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
        reader = asyncio.create_task(
            read_ledger(
                bootstrap,
                settings.topics.results,
                settings.topics.dead_letter,
                ids,
                escalations_topic=settings.topics.escalations,
                isolation_level=isolation,
                timeout_s=scaled(5400, 900),
                linger_s=8.0,
            )
        )
        kills_ms: list[int] = []
        started = time.monotonic()
        try:
            while not reader.done():
                await asyncio.wait([reader], timeout=interval_s)
                if reader.done():
                    break
                victim = cheap[len(kills_ms) % 2]
                kills_ms.append(int(time.time() * 1000))
                await asyncio.to_thread(victim.kill)
                joined = victim.assignments()
                victim.start()
                # The next kill waits until this restart has joined the group: on a slow
                # machine a fixed interval would kill instances before they did any work.
                for _ in range(600):
                    if reader.done() or victim.assignments() > joined:
                        break
                    await asyncio.sleep(0.2)
            ledger = await reader
        finally:
            for proc in (*cheap, strong):
                await asyncio.to_thread(proc.terminate, 30)
        elapsed = time.monotonic() - started
    per_kill = ledger.cheap_duplicates_per_interval(kills_ms)
    # The last interval also holds late duplicates of the strong tier's reading: report both.
    report(
        f"crash loop ({guarantee})",
        load=f"{n} requests backlog, 6 partitions, 2 cheap + 1 strong processes",
        fault=f"SIGKILL + restart of a cheap instance {interval_s:g}s after the last one joined",
        kills=len(kills_ms),
        duration_s=round(elapsed, 1),
        max_duplicates_per_kill=max(per_kill, default=0),
        duplicate_window=WINDOW,
        **ledger_row(ledger),
    )
    assert len(kills_ms) >= 3, "the run ended before the crash loop meant much"
    assert ledger.lost == [], f"lost {len(ledger.lost)} ids, e.g. {ledger.lost[:5]}"
    assert not ledger.dead, f"nothing here should be dead-lettered: {dict(ledger.dead)}"
    if guarantee == "exactly_once":
        assert ledger.duplicated == 0, f"{ledger.duplicated} duplicates under exactly-once"
    else:
        assert max(per_kill, default=0) <= WINDOW, (per_kill, WINDOW)


@pytest.mark.timeout(6000)
async def test_crash_loop_at_least_once_loses_nothing(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    await crash_loop(kafka_bootstrap, unique, tmp_path, "at_least_once", scaled(20_000, 2_000), 5.0)


@pytest.mark.timeout(6000)
async def test_crash_loop_exactly_once_reads_every_id_once(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    await crash_loop(kafka_bootstrap, unique, tmp_path, "exactly_once", scaled(20_000, 2_500), 3.0)
