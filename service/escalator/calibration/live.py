"""The live monitors of the thresholds file in force, with their metrics: which tier runs
which, and what each unit is (``monitor.py`` holds the tests themselves).

- ``agreement`` (strong tier, a certified quality file): every escalation is a unit that agrees
  by definition (its routed answer is the strong one, probability 1); every shadow a unit that
  agrees or differs, at its shadow rate. The strong tier sees both, because shadowed requests
  arrive on the escalations topic with the cheap answer attached.
- ``people`` (the review console, a certified human file): every adjudication decision is a
  unit, its routed answer at the file's (t_c, t_s) right or wrong against the person, at its
  inclusion probability. The console is where those decisions are made; the strong tier never
  sees them.
- ``confidence`` (cheap tier, any file that stores the window's histogram): every cheap answer.

Each process tests what it sees, from its start: its false-alarm bound ``alpha`` holds per
process lifetime (docs/OPERATIONS.md, EscalatorGuaranteeBroken, says what that means with
several pods and restarts). ``escalator_monitor_rejected`` latches at 1 once a test rejects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from escalator.calibration.monitor import DriftMonitor, PromiseMonitor
from escalator.calibration.threshold_file import Promise
from escalator.contract.reviews import ReviewItem
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics

logger = logging.getLogger("escalator.monitor")


class _Series:
    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.evalue = metrics.monitor_evalue.labels(name, version)
        self.rejected = metrics.monitor_rejected.labels(name, version)
        self.tested = metrics.monitor_observations.labels(name, "tested")
        self.skipped = metrics.monitor_observations.labels(name, "skipped")
        self.evalue.set(1.0)
        self.rejected.set(0)
        self._was = False

    def show(self, evalue: float, rejected: bool) -> None:
        self.evalue.set(evalue)
        if rejected and not self._was:
            self._was = True
            self.rejected.set(1)
            log(
                logger,
                "monitor_rejected",
                logging.ERROR,
                monitor=self.name,
                version=self.version,
                evalue=round(evalue, 3),
            )


class LivePromise:
    """A ``PromiseMonitor`` with its series (``tiers.handlers.PromiseWatch``)."""

    def __init__(self, monitor: PromiseMonitor, series: _Series) -> None:
        self.monitor = monitor
        self._series = series

    def observe(self, loss: float, probability: float) -> None:
        before = self.monitor.ignored
        self.monitor.observe(loss, probability)
        if self.monitor.ignored > before:
            self._series.skipped.inc()
            return
        self._series.tested.inc()
        self._series.show(self.monitor.evalue, self.monitor.rejected)


class LiveConfidence:
    """A ``DriftMonitor`` with its series (``tiers.handlers.ConfidenceWatch``)."""

    def __init__(self, monitor: DriftMonitor, series: _Series) -> None:
        self.monitor = monitor
        self._series = series

    def observe(self, confidence: float | None) -> None:
        self.monitor.observe(confidence)
        self._series.tested.inc()
        if self.monitor.observations % 16 == 0:
            self._series.show(self.monitor.evalue, self.monitor.rejected)


def agreement_watch(
    promise: Promise | None, *, alpha: float, shadow_rate: float, metrics: Metrics
) -> LivePromise | None:
    """The strong tier's test of a certified quality file (None when there is none to test,
    or no shadow sampling to test it with)."""
    if promise is None or not promise.certified or promise.objective != "quality":
        return None
    if shadow_rate <= 0:
        log(
            logger,
            "monitor_off",
            logging.WARNING,
            monitor="agreement",
            reason="ESCALATOR_SHADOW_RATE=0: accepted answers are never compared",
        )
        return None
    monitor = PromiseMonitor(1.0 - promise.target, alpha=alpha, min_probability=shadow_rate)
    return LivePromise(monitor, _Series(metrics, "agreement", promise.version))


def confidence_watch(
    promise: Promise | None, *, alpha: float, metrics: Metrics
) -> LiveConfidence | None:
    """The cheap tier's test of its confidences against the window's (None without a
    histogram in the file)."""
    if promise is None or promise.histogram is None:
        return None
    monitor = DriftMonitor(promise.histogram, promise.invalid, alpha=alpha)
    if not monitor.edges:
        return None
    return LiveConfidence(monitor, _Series(metrics, "confidence", promise.version))


@dataclass(frozen=True, slots=True)
class TierWatches:
    """The tiers' live tests of the thresholds file in force, built for the tier that asks
    (``tiers.table.Watches``): ESCALATOR_MONITOR_ALPHA, ESCALATOR_SHADOW_RATE."""

    promise: Promise | None
    alpha: float
    shadow_rate: float
    metrics: Metrics

    def agreement(self) -> LivePromise | None:
        return agreement_watch(
            self.promise, alpha=self.alpha, shadow_rate=self.shadow_rate, metrics=self.metrics
        )

    def confidence(self) -> LiveConfidence | None:
        return confidence_watch(self.promise, alpha=self.alpha, metrics=self.metrics)


def tier0_watch(
    target: float, version: str, *, alpha: float, sample_rate: float, metrics: Metrics
) -> LivePromise | None:
    """Tier 0's test of its certified target (``tier0/watch.py``): every request the cheap
    tier sees is a unit, one tier 0 declined agreeing by definition (probability 1), one it
    answered and sampled agreeing or differing at ``sample_rate`` (None when the target leaves
    no room or nothing is sampled)."""
    if sample_rate <= 0 or not 0 < target < 1:
        log(
            logger,
            "monitor_off",
            logging.WARNING,
            monitor="tier0",
            reason="ESCALATOR_TIER0_SAMPLE_RATE=0" if sample_rate <= 0 else f"target {target}",
        )
        return None
    monitor = PromiseMonitor(1.0 - target, alpha=alpha, min_probability=sample_rate)
    return LivePromise(monitor, _Series(metrics, "tier0", version))


class PeopleWatch:
    """The review console's test of a certified human file: each adjudication decision is a
    unit, wrong when the routed answer at the file's thresholds differs from the person's."""

    def __init__(self, promise: Promise, monitor: PromiseMonitor, series: _Series) -> None:
        self.promise = promise
        self.live = LivePromise(monitor, series)

    def routed_wrong(self, item: ReviewItem, label: str | None) -> bool:
        t_c = self.promise.cheap_threshold
        t_s = self.promise.strong_threshold if self.promise.strong_threshold is not None else 0.0
        cheap, strong = item.cheap, item.strong
        if cheap.valid and cheap.label is not None and cheap.confidence >= t_c:
            routed: str | None = cheap.label
        elif (
            strong.valid
            and not strong.refused
            and strong.label is not None
            and strong.label not in self.promise.review_labels
            and strong.confidence >= t_s
        ):
            routed = strong.label
        else:
            return False  # a person decides: right by definition
        return label is None or routed != label

    def observe(self, item: ReviewItem, label: str | None) -> None:
        """One adjudication decision (``label`` None: the person said "neither")."""
        if item.queue != "adjudication":
            return  # chosen by rule, not a sample
        self.live.observe(1.0 if self.routed_wrong(item, label) else 0.0, item.inclusion)


def people_watch(
    promise: Promise | None,
    *,
    alpha: float,
    shadow_rate: float,
    adjudicate: tuple[float, float],
    metrics: Metrics,
) -> PeopleWatch | None:
    """The console's test of a certified human file (None when there is none, or when the
    design leaves accepted requests without any chance of adjudication)."""
    if promise is None or not promise.certified or promise.objective != "human":
        return None
    floor = min(adjudicate) * min(shadow_rate, 1.0)
    if floor <= 0:
        log(
            logger,
            "monitor_off",
            logging.WARNING,
            monitor="people",
            reason="an adjudication or shadow rate is 0: some requests are never adjudicated",
        )
        return None
    monitor = PromiseMonitor(1.0 - promise.target, alpha=alpha, min_probability=floor)
    return PeopleWatch(promise, monitor, _Series(metrics, "people", promise.version))
