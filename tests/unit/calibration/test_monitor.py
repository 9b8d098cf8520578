"""The live monitors (calibration/monitor.py), against streams whose truth is known exactly:
false alarms over long streams at the target stay at or under alpha, and drops of 1 and 2
points of agreement are detected (the median delay is printed); the confidence-drift test
holds its alpha with a reference of finite size and notices a model update that leaves the
escalation rate where it was.

CI runs a few dozen streams; the full scale (``make calibration-stats``) runs 200 per cell and
prints the tables docs/CALIBRATION.md shows:
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \
        tests/unit/calibration/test_monitor.py -q -s
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import numpy.typing as npt
import pytest

from escalator.calibration import binomial
from escalator.calibration.monitor import (
    DriftMonitor,
    EDetector,
    PromiseMonitor,
    drift_edges,
)

FULL = os.environ.get("ESCALATOR_CALIBRATION_SCALE") == "full"
ALPHA = 0.05
TARGET = 0.98  # agreement certified
ESCALATED = 0.25  # share of traffic the cheap tier escalates
FloatArray = npt.NDArray[np.float64]


def test_an_edetector_starts_at_one_and_does_not_bet_while_the_past_says_h0() -> None:
    """A stream of units below the bound: no bet is ever made, so the e-value stays at 1
    and nothing is rejected; a reset starts afresh."""
    d = EDetector(1.0, alpha=0.05, start_every=10, half_life=20)
    for _ in range(500):
        d.update(-0.5)
    assert d.evalue == pytest.approx(1.0) and not d.rejected and d.bet() == 0.0
    for _ in range(200):
        d.update(1.0)
    assert d.rejected and d.evalue >= 20
    d.reset()
    assert d.evalue == 1.0 and not d.rejected and d.observations == 0


def test_a_bet_never_exceeds_its_cap() -> None:
    """However good the past looks, a bet stays below CAP / lower, so no factor can reach 0."""
    d = EDetector(0.02, alpha=0.05)
    for _ in range(50):
        d.update(1.0)
    assert 0 < d.bet() <= 0.5 / 0.02


def test_units_below_the_sampling_floor_are_skipped() -> None:
    """A unit whose probability is below the floor could break the bet's limit: skipped,
    counted, never tested."""
    m = PromiseMonitor(0.02, alpha=0.05, min_probability=0.1)
    m.observe(1.0, 0.05)
    m.observe(0.0, 1.5)
    assert m.ignored == 2 and m.observations == 0
    m.observe(0.0, 0.1)
    assert m.observations == 1


CHUNK = 50_000


def first_alarm(
    rng: np.random.Generator,
    n: int,
    p: float,
    disagreement: float,
    *,
    change_at: int = 0,
    before: float | None = None,
) -> int | None:
    """The request at which a fresh monitor of a TARGET promise rejects (None: not within
    ``n``), fed what the strong tier sees: every escalation (agrees, probability 1) and each
    accepted request shadowed with rate ``p`` (differs at the accepted share's rate).
    ``disagreement`` is D = P(accepted, differs) = 1 - agreement of routed answers; ``before``
    is D before request ``change_at``."""
    m = PromiseMonitor(1 - TARGET, alpha=ALPHA, min_probability=p)
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        at = start + np.arange(size)
        d = np.where(at < change_at, before if before is not None else disagreement, disagreement)
        accepted = rng.random(size) >= ESCALATED
        differs = rng.random(size) < d / (1 - ESCALATED)
        shadow = accepted & (rng.random(size) < p)
        idx = np.flatnonzero(~accepted | shadow)
        loss = np.where(accepted[idx] & differs[idx], 1.0, 0.0).tolist()
        prob = np.where(accepted[idx], p, 1.0).tolist()
        for i, x, q in zip(idx.tolist(), loss, prob, strict=True):
            m.observe(x, q)
            if m.rejected:
                return start + i
    return None


@pytest.mark.timeout(3600 if FULL else 300)
@pytest.mark.parametrize("p", [1.0, 0.2])
def test_false_alarms_over_long_streams_at_the_target_stay_under_alpha(p: float) -> None:
    """Agreement exactly at the target (the worst case the promise allows) for a long stream:
    the share of streams that ever alarm is at most alpha (the e-process's Ville bound)."""
    streams = 200 if FULL else 20
    n = 1_000_000 if FULL else 50_000
    rng = np.random.default_rng(int(p * 100))
    started = time.monotonic()
    alarms = sum(first_alarm(rng, n, p, 1 - TARGET) is not None for _ in range(streams))
    print(
        f"\nfalse alarms at the target, p={p:g}: {alarms}/{streams} streams of {n:,} requests "
        f"(alpha {ALPHA}; {time.monotonic() - started:.0f} s)"
    )
    limit = int(np.floor(ALPHA * streams)) if FULL else _binomial_99(streams, ALPHA)
    assert alarms <= limit


def _binomial_99(reps: int, p: float) -> int:
    k = 0
    while binomial.cdf(k, reps, p)[()] < 0.99:
        k += 1
    return k


@pytest.mark.timeout(3600 if FULL else 300)
@pytest.mark.parametrize(("p", "drop"), [(1.0, 0.01), (1.0, 0.02), (0.2, 0.01), (0.2, 0.02)])
def test_a_drop_in_agreement_is_detected(p: float, drop: float) -> None:
    """Agreement 1 or 2 points below the target, from the start and after a long stretch at
    the target: every stream alarms, and the median delay (in requests) is printed."""
    streams = 200 if FULL else 8
    rng = np.random.default_rng(int(p * 1000 + drop * 100))
    n = 2_000_000
    fresh = [first_alarm(rng, n, p, 1 - TARGET + drop) for _ in range(streams)]
    pre = 100_000 if FULL else 20_000
    later = [
        first_alarm(rng, n + pre, p, 1 - TARGET + drop, change_at=pre, before=1 - TARGET)
        for _ in range(streams)
    ]
    late = [x - pre for x in later if x is not None and x >= pre]
    early = sum(1 for x in later if x is not None and x < pre)
    found = [x for x in fresh if x is not None]
    print(
        f"\ndrop {drop:.0%}, p={p:g}: median delay {np.median(found):,.0f}"
        f" requests from the start ({sum(x is not None for x in fresh)}/{streams}); "
        f"{np.median(late):,.0f} after {pre:,} at the target ({len(late)}/{streams}, "
        f"{early} alarmed before the change)"
    )
    assert all(x is not None for x in fresh)
    assert len(late) + early == streams


def test_drift_edges_cover_the_reference_with_exact_intervals() -> None:
    """Edges at the histogram's bin boundaries nearest the quantiles, each interval an exact
    Clopper-Pearson one at alpha / (4 J) around the reference share."""
    counts = [0] * 100
    for b in range(50, 100):
        counts[b] = 100
    edges = drift_edges(counts, invalid=0, alpha=0.05)
    assert [e.at for e in edges] == [0.55, 0.62, 0.75, 0.87, 0.95]
    n, each = 5000, 0.05 / 2 / 10
    for e in edges:
        k = round(e.at * 100 - 50) * 100
        assert e.low == pytest.approx(binomial.lower(k, n, each)[()])
        assert e.high == pytest.approx(binomial.upper(k, n, each)[()])


def _confidences(rng: np.random.Generator, n: int, shape: float = 8.0) -> FloatArray:
    """Cheap confidences: a beta(shape, 1.5) shape, roughly the simulator's."""
    return np.asarray(rng.beta(shape, 1.5, n), np.float64)


def _histogram(conf: FloatArray) -> list[int]:
    bins = np.minimum((conf * 100).astype(np.int64), 99)
    return [int(x) for x in np.bincount(bins, minlength=100)]


def first_drift(rng: np.random.Generator, ref: int, live: FloatArray) -> int | None:
    m = DriftMonitor(_histogram(_confidences(rng, ref)), 0, alpha=ALPHA)
    for i, c in enumerate(live.tolist()):
        m.observe(c)
        if m.rejected:
            return i
    return None


@pytest.mark.timeout(3600 if FULL else 300)
def test_confidence_drift_holds_alpha_with_a_finite_reference_and_catches_an_update() -> None:
    """Live confidences from the reference's own distribution (the reference itself a
    finite sample of 10,000): at most alpha of the streams alarm. A model update that
    reshapes the confidences above the threshold but keeps the share below 0.7 (the
    escalation rate) is caught in every stream; its median delay is printed."""
    streams = 200 if FULL else 10
    n = 200_000 if FULL else 20_000
    rng = np.random.default_rng(5)
    alarms = sum(first_drift(rng, 10_000, _confidences(rng, n)) is not None for _ in range(streams))
    # The update: the same share below 0.7 (the escalation rate at threshold 0.7), but the
    # confident answers a little more confident (u -> u^0.8 above 0.7).
    delays, shares = [], []
    for _ in range(streams):
        conf = _confidences(rng, n)
        before = float(np.mean(conf < 0.7))
        high = conf >= 0.7
        conf[high] = 0.7 + 0.3 * ((conf[high] - 0.7) / 0.3) ** 0.8
        shares.append((before, float(np.mean(conf < 0.7))))
        delays.append(first_drift(rng, 10_000, conf))
    caught = [d for d in delays if d is not None]
    print(
        f"\nconfidence drift: {alarms}/{streams} false alarms over {n:,} answers (alpha "
        f"{ALPHA}); an update that keeps the escalation rate caught in {len(caught)}/{streams}, "
        f"median {np.median(caught):,.0f} answers"
    )
    limit = int(np.floor(ALPHA * streams)) if FULL else _binomial_99(streams, ALPHA)
    assert alarms <= limit
    assert len(caught) == streams
    assert all(math.isclose(a, b) for a, b in shares)  # the escalation rate did not move
