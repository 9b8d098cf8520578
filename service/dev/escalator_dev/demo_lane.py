"""``escalator demo``'s lane phase (issue 24): phase 3's requests again, each with a day to
spare, through the batch lane, and the cost of the two lanes side by side.

The phase runs with ``ESCALATOR_BATCH_LANE=on`` and ``ESCALATOR_DEADLINE_S=86400`` (the
requests topic's default deadline), phase 3's thresholds and no shadow calls; the cheap and
strong tiers run as in the other phases (``demo._round_trip``) and the lane worker beside them
(``build_service(settings, ["lane"])``, as ``escalator run --tier lane`` would). The requests
carry phase 3's texts under new ids. Only on the emulator: its Message Batches API answers each
batch ``--lane-batch-s`` seconds after its creation (10 by default; up to 300 for the feel of
real minutes, where most real batches end within an hour and all within 24 hours), so every
figure of the phase is simulated. With ``ANTHROPIC_API_KEY`` set the phase is skipped: a real
batch may take hours.

What the comparison shows: the recorded cost of each request's calls (shadow calls apart, as
in the phase summaries), split by model, per 1,000 requests, in real time (phase 3) and through
the lane, and the time to result. The lane batches the cheap model's calls only: escalations
are answered by the strong model in real time, at the real-time price.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from escalator.cli._common import number
from escalator.config import Settings, load_settings
from escalator_dev import datasets

#: Every request's deadline in this phase: a day (the rule sends it to the lane).
DEADLINE_S = 86400
#: A batch is submitted once its oldest request waited this long (ESCALATOR_BATCH_MAX_AGE_S).
MAX_AGE_S = 5
#: The longest batch processing time the demo accepts: its round trip gives up at 600 s.
MAX_BATCH_S = 300.0


def add_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--lane-batch-s",
        type=number(0.0, MAX_BATCH_S),
        default=10.0,
        help="the lane phase: seconds the emulator takes to process a batch (default 10; up "
        "to 300 for the feel of real minutes; 0 skips the phase)",
    )


def lane_env(env: dict[str, str], thresholds: Path) -> dict[str, str]:
    """The demo's environment with the lane on, a day's deadline, phase 3's thresholds, no
    shadow calls, and the lane's topics and group named after the demo's own."""
    suffix = env["ESCALATOR_REQUESTS_TOPIC"].removesuffix(".requests")
    return {
        **env,
        "ESCALATOR_SHADOW_RATE": "0",
        "ESCALATOR_THRESHOLDS_FILE": str(thresholds),
        "ESCALATOR_BATCH_LANE": "on",
        "ESCALATOR_DEADLINE_S": str(DEADLINE_S),
        "ESCALATOR_BATCH_MAX_AGE_S": str(MAX_AGE_S),
        "ESCALATOR_BATCH_POLL_S": "1",
        "ESCALATOR_HANDOFF_TOPIC": f"{suffix}.handoff",
        "ESCALATOR_LANE_STATE_TOPIC": f"{suffix}.lane-state",
        "ESCALATOR_LANE_GROUP": f"{suffix.replace('.', '-')}-lane",
    }


def set_batch_time(sim_url: str, seconds: float) -> None:
    """The emulator's batch processing time (``POST /_sim/config``)."""
    body = orjson.dumps({"batch_latency_s": seconds})
    request = urllib.request.Request(
        f"{sim_url}/_sim/config", body, {"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@contextlib.asynccontextmanager
async def lane_worker(settings: Settings) -> AsyncIterator[None]:
    """The lane worker in this process while the block runs."""
    from escalator.app import build_service

    service = build_service(settings, ["lane"])
    run = asyncio.create_task(service.run(install_signals=False))
    try:
        yield
    finally:
        service.stop()
        await run


#: The demo's round trip (``demo._round_trip``, handed in: the demo imports this module).
RoundTrip = Callable[[Settings, list[datasets.Sample]], Awaitable[tuple[Any, float]]]


async def lane_round_trip(
    settings: Settings, samples: list[datasets.Sample], round_trip: RoundTrip
) -> Any:
    """The demo's round trip (both tiers) with the lane worker beside it; its tally."""
    from escalator.kafka.clients import create_topics

    # Before the lane worker starts (the round trip creates them too, once it has begun).
    await create_topics(settings.kafka, settings.topics.all(), settings.topic_partitions, 1)
    async with lane_worker(settings):
        tally, _ = await round_trip(settings, samples)
    return tally


@dataclasses.dataclass(frozen=True, slots=True)
class LaneFigures:
    """One lane's side of the comparison."""

    requests: int
    cheap_per_1k: float
    strong_per_1k: float
    batch_answers: int
    p50_s: float
    p99_s: float

    @property
    def total_per_1k(self) -> float:
        return self.cheap_per_1k + self.strong_per_1k

    @classmethod
    def of(cls, results: list[dict[str, Any]], latency_ms: list[float]) -> LaneFigures:
        """From a phase's results (their attempts' recorded costs) and times to result."""
        n = max(1, len(results))
        attempts = [a for r in results for a in r["attempts"]]
        cheap = sum(a["cost_usd"] for a in attempts if a["tier"] == "cheap")
        strong = sum(a["cost_usd"] for a in attempts if a["tier"] == "strong")
        batch = sum(
            1 for a in attempts if a["tier"] == "cheap" and a.get("service_tier") == "batch"
        )
        return cls(
            len(results),
            1000 * cheap / n,
            1000 * strong / n,
            batch,
            *_p50_p99_s(latency_ms),
        )


def _p50_p99_s(latency_ms: list[float]) -> tuple[float, float]:
    """The median and 99th percentile, in seconds (nan without values)."""
    if len(latency_ms) < 2:
        return (latency_ms[0] / 1000,) * 2 if latency_ms else (float("nan"),) * 2
    q = statistics.quantiles(latency_ms, n=100, method="inclusive")
    return q[49] / 1000, q[98] / 1000


def _say(line: str) -> None:
    """The demo prints its story."""
    print(line)


def side_by_side(realtime: LaneFigures, lane: LaneFigures) -> Iterator[str]:
    """The comparison's lines (simulated figures, labelled by the caller)."""

    def ratio(top: float, bottom: float) -> str:
        return f"{top / bottom:.0%}" if bottom else "n/a"

    yield f"  {'':<28}{'real time (phase 3)':>22}{'batch lane':>18}{'lane / real time':>18}"
    rows = (
        ("cheap model, per 1,000", realtime.cheap_per_1k, lane.cheap_per_1k),
        ("strong model, per 1,000", realtime.strong_per_1k, lane.strong_per_1k),
        ("total, per 1,000 requests", realtime.total_per_1k, lane.total_per_1k),
    )
    for name, rt, ln in rows:
        yield f"  {name:<28}{f'${rt:.4f}':>22}{f'${ln:.4f}':>18}{ratio(ln, rt):>18}"
    times = (
        f"{realtime.p50_s:.1f} s / {realtime.p99_s:.1f} s",
        f"{lane.p50_s:.1f} s / {lane.p99_s:.1f} s",
    )
    yield f"  {'time to result, p50 / p99':<28}{times[0]:>22}{times[1]:>18}"
    yield (
        f"  {lane.batch_answers} of {lane.requests} cheap answers came from batches, at half "
        "price; escalations went to the strong model in real time, at full price."
    )


def lane_phase(
    env: dict[str, str],
    samples: list[datasets.Sample],
    realtime: Any,
    thresholds: Path,
    batch_s: float,
    simulated: bool,
    round_trip: RoundTrip,
) -> None:
    """The phase: ``samples`` (phase 3's) again under new ids through the lane, and the
    comparison with ``realtime`` (phase 3's tally)."""
    if not simulated:
        _say(
            "\nThe batch lane phase is skipped with ANTHROPIC_API_KEY set: a real batch may "
            "take hours (run the demo on the emulator to see it)."
        )
        return
    _say(
        f"\nPhase 3b: the batch lane. Phase 3's {len(samples)} requests again, each with a day to "
        f"spare (ESCALATOR_DEADLINE_S={DEADLINE_S}, ESCALATOR_BATCH_LANE=on): the cheap tier "
        "hands them to the lane, which sends them to the Message Batches API at half price. "
        f"The emulator processes each batch in {batch_s:g} s (--lane-batch-s; real batches "
        "mostly end within an hour). No shadow calls in this phase."
    )
    set_batch_time(env["ANTHROPIC_BASE_URL"], batch_s)
    settings = load_settings(lane_env(env, thresholds))
    again = [dataclasses.replace(s, id=f"{s.id}-lane") for s in samples]
    tally = asyncio.run(lane_round_trip(settings, again, round_trip))
    _say(
        f"  {len(tally.results)} results, {tally.duplicates} duplicates, "
        f"{sum(tally.dead_letters.values())} dead letters"
    )
    _say("\nThe two lanes side by side [simulated]:")
    before = LaneFigures.of(list(realtime.results.values()), realtime.latency_ms)
    after = LaneFigures.of(list(tally.results.values()), tally.latency_ms)
    for line in side_by_side(before, after):
        _say(line)
