"""The demo's lane phase on the real broker and the emulator: the same texts in real time (the
demo's round trip) and then through the batch lane (``demo_lane.lane_round_trip``, the lane
worker beside both tiers), compared as the demo compares them."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from escalator.config import load_settings
from escalator_dev.datasets import Sample
from escalator_dev.demo import _round_trip
from escalator_dev.demo_lane import LaneFigures, lane_env, lane_round_trip, set_batch_time
from tests.conftest import running_sim
from tests.integration.harness import make_env
from tests.integration.test_pipeline import TEXTS

N = 12


async def test_the_lane_phase_answers_the_same_texts_through_batches_at_half_the_cheap_price(
    kafka_bootstrap: str, unique: str
) -> None:
    """Each request of the lane round gets exactly one result, every cheap answer from a batch,
    each at half the recorded cost of the same text's real-time answer (the emulator answers
    both alike); an escalation costs half as well when it went to a strong batch, the same
    when it was asked in real time; and the lane's answers take longer."""
    with running_sim() as sim:
        env = make_env(kafka_bootstrap, sim, unique, ESCALATOR_SHADOW_RATE="0")
        samples = [
            Sample(f"{unique}-{i}", f"{TEXTS[i % len(TEXTS)]} ({i})", "safe", 0.0, "test")
            for i in range(N)
        ]
        realtime, _ = await _round_trip(load_settings(env), samples)
        await asyncio.to_thread(set_batch_time, sim, 2.0)
        settings = load_settings({**lane_env(env, Path()), "ESCALATOR_THRESHOLDS_FILE": ""})
        again = [dataclasses.replace(s, id=f"{s.id}-lane") for s in samples]
        lane = await lane_round_trip(settings, again, _round_trip)
    assert sorted(lane.results) == sorted(s.id for s in again)
    assert lane.duplicates == 0 and not lane.dead_letters
    before = LaneFigures.of(list(realtime.results.values()), realtime.latency_ms)
    after = LaneFigures.of(list(lane.results.values()), lane.latency_ms)
    assert (before.batch_answers, after.batch_answers) == (0, N)
    assert after.p50_s > before.p50_s  # a batch's time, against a real-time call's
    # The figures are what each answer recorded. The real-time round's first call to each
    # model wrote the prompt cache, which every later call and the whole lane round read:
    # with the same tokens, a batch answer costs half the real-time answer to the same text,
    # and an escalation (real time in both rounds) the same.
    compared = {"cheap": 0, "strong": 0}
    for s in samples:
        for tier in ("cheap", "strong"):
            rt = [a for a in realtime.results[s.id]["attempts"] if a["tier"] == tier]
            ln = [a for a in lane.results[f"{s.id}-lane"]["attempts"] if a["tier"] == tier]
            assert len(rt) == len(ln) <= 1
            if tier == "cheap" and ln:
                assert ln[0].get("service_tier") == "batch"
            # An escalation with the deadline's slack goes to a strong batch too (half price);
            # one without it is asked in real time (the same price).
            share = 0.5 if ln and ln[0].get("service_tier") == "batch" else 1.0
            if rt and rt[0]["cache_write_tokens"] == 0:
                assert ln[0]["cost_usd"] == pytest.approx(rt[0]["cost_usd"] * share)
                compared[tier] += 1
    assert compared["cheap"] >= N - 1 and compared["strong"] >= 1, compared
