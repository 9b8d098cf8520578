"""Sequential tests that say when a certified promise stops holding, valid over all time: the
promise of a thresholds file (agreement with the strong model, or accuracy against people) on
the live shadow and adjudication data, and the live cheap confidences against the window's.

One piece, three uses: ``PromiseMonitor`` (the strong tier: shadows and escalations; the
review console: adjudication decisions; and a learned tier 0 later), ``DriftMonitor`` (the
cheap tier), both built on ``EDetector``. Pure Python: one update per record, no arrays.

The test (``EDetector``). A stream of numbers ``U_t`` whose conditional mean is at most 0 while
the promise holds. Bet on it: ``K_t = prod (1 + lam_s U_s)``, each bet ``lam_s >= 0`` fixed
before ``U_s`` is seen and small enough that no factor can be negative (``U >= -L`` is known,
``lam <= CAP / L``). While the promise holds ``K`` is a nonnegative supermartingale from 1, so by
Ville's inequality ``P(K_t >= 1/alpha at any time, ever) <= alpha``: the false-alarm
probability holds over the whole stream, however long it runs and however often it is looked
at. That is why an e-process and not a fixed-sample test repeated (whose errors add up) or a
CUSUM (whose guarantee is an average run length, not a probability).

The bets are Kelly's, from exponentially weighted moments of the past (half-life
``half_life`` observations): ``lam = mean / second moment``, 0 while the past says the promise
holds. A process started at the beginning would have to win back, after a change, what it lost
on noise before it; so the detector mixes processes started every ``start_every``
observations, the k-th with weight ``1 / ((k + 1)(k + 2))`` (the weights sum to 1): a mixture of
test supermartingales is one. At most ``max_active`` run at once; the weakest beyond that is
frozen at its current value (a stopped supermartingale is one too), so memory stays bounded.

Units. ``PromiseMonitor`` turns an observation (a loss in [0, 1] and the probability that this
unit was sampled) into ``U = (loss - bound) / probability``: its mean over every request is the
mean loss minus the bound (Horvitz-Thompson), and unsampled requests add 0, so only sampled
units need be seen. A unit with a probability below ``min_probability`` is skipped (its ``U``
could break the bet's limit; skipping a whole class of units by its design probability keeps
the test valid). ``DriftMonitor`` tests, at a few edges ``c`` of the reference histogram, that
the live share of confidences below ``c`` stays inside the reference's exact 1 - alpha/2
interval (which covers the reference window's own sampling error), with the 2J one-sided
detectors averaged (an average of e-processes on one stream is one) at ``alpha / 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The largest bet, as a share of the one that could zero a factor.
CAP = 0.5
#: Defaults for the live monitors (observations are units the monitor sees).
START_EVERY = 1000
MAX_ACTIVE = 16
HALF_LIFE = 2000.0
#: How often the mixture's value is computed (its maximum over these times is what is tested;
#: a subset of times keeps Ville's bound).
CHECK_EVERY = 16
#: Reference quantiles at which the confidence drift is tested.
DRIFT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class EDetector:
    """Tests ``H0: E[U_t | past] <= 0`` on a stream with ``U_t >= -lower`` (module docstring)."""

    def __init__(
        self,
        lower: float,
        *,
        alpha: float,
        start_every: int = START_EVERY,
        max_active: int = MAX_ACTIVE,
        half_life: float = HALF_LIFE,
    ) -> None:
        if not lower > 0:
            raise ValueError(f"lower must be > 0, not {lower}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), not {alpha}")
        self.lower = lower
        self.alpha = alpha
        self.start_every = start_every
        self.max_active = max_active
        self._beta = 0.5 ** (1.0 / half_life)
        self.reset()

    def reset(self) -> None:
        """A fresh test: a new promise (or a new reference) starts from nothing."""
        self.observations = 0
        self._m1 = self._m2 = 0.0
        self._weight = 0.0  # 1 - beta^t: bias correction of the moving averages
        self._s = 0.0  # cumulative log of the common factors
        self._active: list[tuple[float, float]] = []  # (weight, s at start)
        self._frozen = 0.0
        self._starts = 0
        self._value = 1.0
        self.peak = 1.0
        self.rejected = False

    def bet(self) -> float:
        """The next bet, from the past only."""
        if self._weight <= 0:
            return 0.0
        mean = self._m1 / self._weight
        second = self._m2 / self._weight
        if mean <= 0 or second <= 0:
            return 0.0
        return min(mean / second, CAP / self.lower)

    def update(self, u: float) -> None:
        if self.observations % self.start_every == 0:
            self._start()
        lam = self.bet()
        self._s += math.log1p(max(lam * u, -CAP))
        b = self._beta
        self._m1 = b * self._m1 + (1 - b) * u
        self._m2 = b * self._m2 + (1 - b) * u * u
        self._weight = b * self._weight + (1 - b)
        self.observations += 1
        if self.observations % CHECK_EVERY == 0:
            self._check()

    def _start(self) -> None:
        k = self._starts
        self._starts += 1
        self._active.append((1.0 / ((k + 1) * (k + 2)), self._s))
        if len(self._active) > self.max_active:
            worth = [w * _exp(self._s - s0) for w, s0 in self._active]
            weakest = min(range(len(worth)), key=worth.__getitem__)
            self._frozen += worth[weakest]
            del self._active[weakest]
        self._check()

    def _check(self) -> None:
        value = self._frozen + sum(w * _exp(self._s - s0) for w, s0 in self._active)
        # The mixture's unstarted weights are still 1-valued processes: count them, so the
        # value is the e-process itself (it starts at 1).
        value += 1.0 / (self._starts + 1)
        self._value = value
        self.peak = max(self.peak, value)
        if value >= 1.0 / self.alpha:
            self.rejected = True

    @property
    def evalue(self) -> float:
        """The e-process now (1 at the start; ``1/alpha`` or more rejects)."""
        return self._value


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


class PromiseMonitor:
    """``H0``: the promise holds, i.e. the mean loss over traffic is at most ``bound``
    (1 - the certified target). Feed it sampled units: their loss (0 right or agreeing, 1
    wrong or differing) and the probability that the unit was sampled (1 for a unit every
    request yields)."""

    def __init__(
        self,
        bound: float,
        *,
        alpha: float,
        min_probability: float,
        start_every: int = START_EVERY,
        max_active: int = MAX_ACTIVE,
        half_life: float = HALF_LIFE,
    ) -> None:
        if not 0 < bound < 1:
            raise ValueError(f"bound must be in (0, 1), not {bound}")
        if not 0 < min_probability <= 1:
            raise ValueError(f"min_probability must be in (0, 1], not {min_probability}")
        self.bound = bound
        self.min_probability = min_probability
        self.detector = EDetector(
            bound / min_probability,
            alpha=alpha,
            start_every=start_every,
            max_active=max_active,
            half_life=half_life,
        )
        self.ignored = 0

    def observe(self, loss: float, probability: float) -> None:
        if probability < self.min_probability or probability > 1:
            self.ignored += 1
            return
        self.detector.update((loss - self.bound) / probability)

    def reset(self, bound: float | None = None) -> None:
        """A new certified artefact: test its promise from nothing."""
        if bound is not None:
            self.bound = bound
            self.detector.lower = bound / self.min_probability
        self.detector.reset()
        self.ignored = 0

    @property
    def evalue(self) -> float:
        return self.detector.evalue

    @property
    def rejected(self) -> bool:
        return self.detector.rejected

    @property
    def observations(self) -> int:
        return self.detector.observations


@dataclass(frozen=True, slots=True)
class Edge:
    """A confidence ``at`` and the reference's interval for the share of answers below it."""

    at: float
    low: float
    high: float


def drift_edges(
    counts: Sequence[int], invalid: int, alpha: float, quantiles: Sequence[float] = DRIFT_QUANTILES
) -> list[Edge]:
    """The edges tested: the histogram's bin boundaries nearest the reference quantiles, each
    with the exact (Clopper-Pearson) interval for its share, at ``alpha / 2`` over all of them
    (Bonferroni), so that the reference window's own sampling error is covered."""
    from escalator.calibration import binomial

    n = sum(counts) + invalid
    if n <= 0:
        return []
    bins = len(counts)
    below = [invalid]
    for c in counts:
        below.append(below[-1] + c)  # below[b]: answers under the edge at b / bins
    chosen: dict[int, int] = {}
    for q in quantiles:
        b = min(range(1, bins), key=lambda k: abs(below[k] / n - q))
        if 0 < below[b] < n:
            chosen[b] = below[b]
    sides = 2 * len(chosen)
    out = []
    for b, k in sorted(chosen.items()):
        each = alpha / 2 / max(sides, 1)
        low = float(binomial.lower(k, n, each)[()])
        high = float(binomial.upper(k, n, each)[()])
        out.append(Edge(at=b / bins, low=low, high=high))
    return out


class DriftMonitor:
    """``H0``: live cheap confidences come from the distribution of the calibration window's
    (a histogram; invalid or refused answers count as below every edge)."""

    def __init__(
        self,
        counts: Sequence[int],
        invalid: int,
        *,
        alpha: float,
        start_every: int = START_EVERY,
        max_active: int = MAX_ACTIVE,
        half_life: float = HALF_LIFE,
    ) -> None:
        self.alpha = alpha
        self.edges = drift_edges(counts, invalid, alpha)

        def detector(lower: float) -> EDetector:
            # Each one's own verdict is unused: their average is what is tested.
            return EDetector(
                lower,
                alpha=alpha / 2,
                start_every=start_every,
                max_active=max_active,
                half_life=half_life,
            )

        self._up = [detector(e.high) for e in self.edges]
        self._down = [detector(1 - e.low) for e in self.edges]
        self.observations = 0
        self.peak = 1.0
        self.rejected = False

    def observe(self, confidence: float | None) -> None:
        """One cheap answer's confidence (None: invalid or refused)."""
        for edge, up, down in zip(self.edges, self._up, self._down, strict=True):
            below = 1.0 if confidence is None or confidence < edge.at else 0.0
            up.update(below - edge.high)
            down.update(edge.low - below)
        self.observations += 1
        if self.observations % CHECK_EVERY == 0:
            value = self.evalue
            self.peak = max(self.peak, value)
            if value >= 2.0 / self.alpha:
                self.rejected = True

    @property
    def evalue(self) -> float:
        """The average of the 2J one-sided e-processes (rejects at ``2 / alpha``)."""
        parts = [d.evalue for d in (*self._up, *self._down)]
        return sum(parts) / len(parts) if parts else 1.0
