"""B7 (issue 14): spending an organisation's rate limit with admission control, against AIMD only.

One emulator process is the organisation: its buckets (one set per rate-limit group) are shared
by every client; it charges a call when it admits it and holds its output reservation until the
response ends, as the API does (before issue 21 it charged after the latency).
The cheap model's limits bind (600 RPM, 200k input TPM, 80k output TPM); the strong model's
(300 RPM) have room. Three cheap-tier processes and one strong-tier process run in their
groups (``escalator run --tier T``, each its own process), and a feeder keeps ``FLOOR``
requests waiting for the cheap tier, so every process is always busy. Each case runs
``ESCALATOR_B7_DURATION_S`` (300 by default) from the first cheap answer, with admission
control (``ESCALATOR_ADMISSION=on``, the default) and with AIMD only (``off``, the behaviour
before it), and each once more with one cheap process SIGKILLed half-way and restarted 15 s
later. The modes alternate, so both face the same machine in the same hour.

Figures per case: 429s as a fraction of the calls to the cheap model; the used fraction of
each cheap limit over the run and after its first minute (what the emulator charged, over
limit/60 x seconds: the bucket starts full, so a run may use more than 100%); results per
second; end-to-end latency (result written minus request written) p50 and p99 (with a
backlog kept topped up, this is mostly the wait in the backlog); the strong model's 429s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson

from escalator.config import load_settings
from escalator.kafka.clients import make_producer
from escalator_dev.emulator import server as sim
from tests.integration.harness import make_env, setup_topics
from tests.integration.test_pipeline import TEXTS
from tests.reliability.common import LedgerReader, ServiceProcess, sim_stats

CHEAP, STRONG = "claude-haiku-5-5", "claude-sonnet-5-5"
#: ``requests`` (default): the cheap model's requests limit binds, latency 100-300 ms.
#: ``output``: its output limit binds through the reservation each call holds while it runs
#: (``max_tokens`` 2,048, latency 1-3 s, 60k OTPM): what charging at admission changes.
VARIANT = os.environ.get("ESCALATOR_B7_VARIANT", "requests")
if VARIANT == "output":
    LIMITS = {CHEAP: (6_000, 10_000_000, 60_000), STRONG: (6_000, 10_000_000, 10_000_000)}
    LATENCY = "uniform:1000:3000"
    EXTRA_ENV = {"ESCALATOR_MODEL_MAX_TOKENS": "2048"}
else:
    LIMITS = {CHEAP: (600, 200_000, 80_000), STRONG: (300, 150_000, 60_000)}
    LATENCY = "uniform:100:300"
    EXTRA_ENV = {}
KINDS = ("requests", "input_tokens", "output_tokens")
DURATION_S = float(os.environ.get("ESCALATOR_B7_DURATION_S", "300"))
#: Which modes to run ("on,off" by default): "on" alone re-measures admission control.
MODES = tuple(os.environ.get("ESCALATOR_B7_MODES", "on,off").split(","))
#: Whether to run the cases without and with a cheap process killed ("no,yes" by default).
KILLS = tuple(k == "yes" for k in os.environ.get("ESCALATOR_B7_KILLS", "no,yes").split(","))
#: Requests produced and not yet decided by the cheap tier, at least (3 x 64 in flight fit).
FLOOR = 600
RESTART_AFTER_S = 15.0


def _terminate_all(processes: list[ServiceProcess]) -> None:
    """SIGTERM every process at once, then wait for each (they drain in parallel)."""
    for p in processes:
        if p.alive():
            assert p.proc is not None
            p.proc.send_signal(signal.SIGTERM)
    for p in processes:
        p.terminate()


def _delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return int(after.get(key, 0)) - int(before.get(key, 0))


async def run_case(bootstrap: str, tmp: Path, mode: str, kill: bool) -> dict[str, Any]:
    """One five-minute run; its figures."""
    unique = f"b7{mode}{'k' if kill else ''}{uuid.uuid4().hex[:6]}"
    limits = [f"--rate-limit={m}={':'.join(map(str, v))}" for m, v in LIMITS.items()]
    proc, url = sim.spawn("--latency", LATENCY, *limits)
    async with AsyncExitStack() as stack:
        stack.callback(sim.terminate, proc)
        env = make_env(
            bootstrap,
            url,
            unique,
            ESCALATOR_TOPIC_PARTITIONS="6",
            ESCALATOR_ADMISSION=mode,
            ESCALATOR_LOG_LEVEL="WARNING",
            # Production's backoff (make_env shortens it for tests), so AIMD-only is today's.
            ESCALATOR_BACKOFF_INITIAL_S="0.5",
            ESCALATOR_BACKOFF_MAX_S="20",
            ESCALATOR_SESSION_TIMEOUT_MS="10000",
            ESCALATOR_SHUTDOWN_GRACE_S="5",
            **EXTRA_ENV,
        )
        settings = load_settings(env)
        await setup_topics(settings)
        t = settings.topics
        cheap = [ServiceProcess(env, "cheap", tmp / f"{unique}-cheap{i}.log") for i in range(3)]
        strong = ServiceProcess(env, "strong", tmp / f"{unique}-strong.log")
        for p in [*cheap, strong]:
            p.start()
        stack.callback(_terminate_all, [*cheap, strong])
        reader = LedgerReader(bootstrap, t.results, t.dead_letter, escalations_topic=t.escalations)
        await reader.start()
        stack.push_async_callback(reader.stop)
        ledger = reader.ledger
        sent: dict[str, int] = {}
        producer = make_producer(settings.kafka, linger_ms=5)
        await producer.start()
        stack.push_async_callback(producer.stop)
        stopping = asyncio.Event()

        async def feed() -> None:
            n = 0
            while not stopping.is_set():
                if n - len(ledger.cheap_outputs) >= FLOOR:
                    await asyncio.sleep(0.05)
                    continue
                futures = []
                for _ in range(100):
                    rid = f"{unique}-{n}"
                    stamp = int(time.time() * 1000)
                    sent[rid] = stamp
                    ledger.expect([rid])
                    value = orjson.dumps({"id": rid, "text": TEXTS[n % len(TEXTS)]})
                    futures.append(
                        await producer.send(t.requests, value, key=rid.encode(), timestamp_ms=stamp)
                    )
                    n += 1
                await asyncio.gather(*futures)

        feeder = asyncio.create_task(feed())
        deadline = time.monotonic() + 120
        while not ledger.cheap_outputs and time.monotonic() < deadline:
            reader.check()
            await asyncio.sleep(0.1)
        if not ledger.cheap_outputs:
            raise RuntimeError("B7: no cheap answer within 120 s")
        t0_wall, t0 = time.time(), time.monotonic()
        s0 = await sim_stats(url)
        s60: dict[str, int] | None = None
        killed_at = restarted_at = None
        while (elapsed := time.monotonic() - t0) < DURATION_S:
            if s60 is None and elapsed >= min(60.0, DURATION_S / 5):
                s60, t60 = await sim_stats(url), time.monotonic()
            if kill and killed_at is None and elapsed >= DURATION_S / 2:
                cheap[0].kill()
                killed_at = elapsed
            if killed_at is not None and restarted_at is None:
                if elapsed >= killed_at + RESTART_AFTER_S:
                    cheap[0].start()
                    restarted_at = elapsed
            if feeder.done():
                feeder.result()
            await asyncio.sleep(0.2)
        s1, t1, t1_wall = await sim_stats(url), time.monotonic(), time.time()
        stopping.set()
        await feeder
    assert s60 is not None
    seconds, steady_s = t1 - t0, t1 - t60
    row: dict[str, Any] = {
        "variant": VARIANT,
        "mode": mode,
        "kill": kill,
        "seconds": round(seconds),
    }
    calls = {m: _delta(s1, s0, f"charged_requests:{m}") for m in LIMITS}
    limited = {m: _delta(s1, s0, f"rate_limited:{m}") for m in LIMITS}
    for m, short in ((CHEAP, "cheap"), (STRONG, "strong")):
        total = calls[m] + limited[m]
        row[f"{short}_429"] = limited[m]
        row[f"{short}_calls"] = total
        row[f"{short}_429_fraction"] = limited[m] / total if total else 0.0
    for kind, per_minute in zip(KINDS, LIMITS[CHEAP], strict=True):
        key = f"charged_{kind}:{CHEAP}"
        row[f"used_{kind}"] = _delta(s1, s0, key) / (per_minute / 60 * seconds)
        row[f"used_{kind}_after_1min"] = _delta(s1, s60, key) / (per_minute / 60 * steady_s)
    lo_ms, hi_ms = t0_wall * 1000, t1_wall * 1000
    firsts = {rid: min(ts) for rid, ts in ledger.results.items() if ts}
    window = {rid: ts for rid, ts in firsts.items() if lo_ms <= ts <= hi_ms and rid in sent}
    row["results_per_s"] = len(window) / seconds
    e2e = [ts - sent[rid] for rid, ts in window.items()]
    if len(e2e) >= 100:
        q = statistics.quantiles(e2e, n=100)
        row["e2e_p50_s"], row["e2e_p99_s"] = q[49] / 1000, q[98] / 1000
    row["killed_at_s"], row["restarted_at_s"] = killed_at, restarted_at
    return row


def describe(row: dict[str, Any]) -> str:
    return (
        f"cheap 429s {row['cheap_429']:,} of {row['cheap_calls']:,} calls "
        f"({row['cheap_429_fraction']:.3%}); used RPM {row['used_requests']:.1%} "
        f"(after 1 min {row['used_requests_after_1min']:.1%}), input TPM "
        f"{row['used_input_tokens']:.1%} ({row['used_input_tokens_after_1min']:.1%}); "
        f"{row['results_per_s']:.2f} results/s; e2e p50 {row.get('e2e_p50_s', float('nan')):.1f} s"
        f", p99 {row.get('e2e_p99_s', float('nan')):.1f} s; strong 429s {row['strong_429']:,} of "
        f"{row['strong_calls']:,}"
    )


async def b7(bootstrap: str, sim_url: str, tmp: Path, report: Any) -> list[dict[str, Any]]:
    rows = []
    for kill in KILLS:
        for mode in MODES:
            started = time.monotonic()
            row = await run_case(bootstrap, tmp, mode, kill)
            row["wall_s"] = round(time.monotonic() - started)
            rows.append(row)
            print("B7 " + orjson.dumps(row).decode(), flush=True)
            variant = ", one cheap process killed and restarted" if kill else ""
            report(
                "B7",
                f"admission {'control' if mode == 'on' else 'off (AIMD only)'}{variant}, "
                f"{row['seconds']} s: {describe(row)} (simulated)",
                f"429s {row['cheap_429_fraction']:.3%}, used {row['used_requests']:.1%}",
                "429s < 0.1%, used >= 95% (admission control)",
            )
    return rows
