"""Scenario 1: SIGKILL a cheap-tier instance every few seconds, restart it, lose nothing.

Two cheap-tier processes share the group, one strong-tier process runs beside them. A feeder
keeps at least ``FLOOR`` produced requests without an outcome, so the group always has work,
however fast the machine. Once every process has joined, one cheap instance is killed
(SIGKILL: no drain, no commit) and restarted, alternately, each kill a few seconds after the
previous restart joined the group; this goes on until ``KILLS`` kills were done and at least
``REQUESTS`` requests were produced. Then production stops and every produced id must be
accounted for. At-least-once: 0 lost, and the duplicates each kill causes stay within the
worker's duplicate window. Exactly-once: a read_committed reader sees every id exactly once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from escalator.config import load_settings
from tests.conftest import running_sim
from tests.integration.harness import make_env, setup_topics
from tests.reliability.common import (
    Feeder,
    LedgerReader,
    ServiceProcess,
    ledger_row,
    report,
    scaled,
)

MAX_IN_FLIGHT = 32
MAX_UNCOMMITTED = 128
#: What one crash can make the group redo: uncommitted records, plus one commit batch.
WINDOW = MAX_UNCOMMITTED + MAX_IN_FLIGHT
#: Requests kept outstanding while the crash loop runs: several windows of work for each of
#: the two cheap instances, so neither is ever idle when it is killed.
FLOOR = 1_000
#: Kills per run, and the least number of requests a run produces.
KILLS = scaled(20, 4)
REQUESTS = scaled(20_000, 2_000)
#: Bound on the whole run (start-up, kills, drain), for a machine that is very slow.
TIMEOUT_S = scaled(5400, 900)


async def _until_joined(
    procs: list[ServiceProcess],
    before: list[int],
    deadline: float,
    feeder: Feeder,
    reader: LedgerReader,
) -> None:
    """Wait until each process has logged an assignment beyond its count in ``before``."""
    while any(p.assignments() <= n for p, n in zip(procs, before, strict=True)):
        feeder.check()
        reader.check()
        for p in procs:
            assert p.alive(), f"{p.log_path.name}: the process exited; see {p.log_path}"
        assert time.monotonic() < deadline, "a restarted instance never joined its group"
        await asyncio.sleep(0.2)


async def crash_loop(
    bootstrap: str, unique: str, tmp_path: Path, guarantee: str, interval_s: float
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
        isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
        reader = LedgerReader(
            bootstrap,
            settings.topics.results,
            settings.topics.dead_letter,
            escalations_topic=settings.topics.escalations,
            isolation_level=isolation,
        )
        feeder = Feeder(bootstrap, settings.topics.requests, reader, unique, floor=FLOOR)
        strong = ServiceProcess(env, "strong", tmp_path / "strong.log")
        cheap = [ServiceProcess(env, "cheap", tmp_path / f"cheap-{i}.log") for i in (0, 1)]
        kills_ms: list[int] = []
        outstanding_at_kills: list[int] = []
        await reader.start()
        started = time.monotonic()
        deadline = started + TIMEOUT_S
        try:
            await feeder.start()
            for proc in (strong, *cheap):
                proc.start()
            # The first kill waits until every instance has joined: on a slow machine start-up
            # alone can take longer than the interval.
            await _until_joined([strong, *cheap], [0, 0, 0], deadline, feeder, reader)
            while len(kills_ms) < KILLS or feeder.produced < REQUESTS:
                assert time.monotonic() < deadline, (
                    f"{len(kills_ms)} kills and {feeder.produced} requests in {TIMEOUT_S} s"
                )
                await asyncio.sleep(interval_s)
                feeder.check()
                reader.check()
                victim = cheap[len(kills_ms) % 2]
                outstanding_at_kills.append(reader.ledger.outstanding)
                kills_ms.append(int(time.time() * 1000))
                await asyncio.to_thread(victim.kill)
                joined = victim.assignments()
                victim.start()
                # The next kill waits until this restart has joined the group, so that every
                # kill hits an instance that was working, at any machine speed.
                await _until_joined([victim], [joined], deadline, feeder, reader)
            produced = await feeder.stop()
            ledger = await reader.wait_complete(max(0.0, deadline - time.monotonic()), 8.0)
        finally:
            await feeder.stop()
            await reader.stop()
            for proc in (*cheap, strong):
                await asyncio.to_thread(proc.terminate, 30)
        elapsed = time.monotonic() - started
    per_kill = ledger.cheap_duplicates_per_interval(kills_ms)
    # The last interval also holds late duplicates of the strong tier's reading: report both.
    report(
        f"crash loop ({guarantee})",
        load=(
            f"at least {FLOOR} requests outstanding until {KILLS} kills and {REQUESTS} "
            "requests, 6 partitions, 2 cheap + 1 strong processes"
        ),
        fault=f"SIGKILL + restart of a cheap instance {interval_s:g}s after the last one joined",
        kills=len(kills_ms),
        produced=produced,
        min_outstanding_at_kill=min(outstanding_at_kills),
        duration_s=round(elapsed, 1),
        max_duplicates_per_kill=max(per_kill, default=0),
        duplicate_window=WINDOW,
        **ledger_row(ledger),
    )
    assert len(kills_ms) >= KILLS and produced >= REQUESTS
    assert min(outstanding_at_kills) > 0, f"a kill came with no work left: {outstanding_at_kills}"
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
    """At-least-once through KILLS kills with work outstanding at each: nothing lost, nothing
    dead-lettered, and no kill makes the group redo more than the duplicate window."""
    await crash_loop(kafka_bootstrap, unique, tmp_path, "at_least_once", 5.0)


@pytest.mark.timeout(6000)
async def test_crash_loop_exactly_once_reads_every_id_once(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """Exactly-once through KILLS kills with work outstanding at each: a read_committed
    reader sees every produced id exactly once, and nothing is dead-lettered."""
    await crash_loop(kafka_bootstrap, unique, tmp_path, "exactly_once", 3.0)
