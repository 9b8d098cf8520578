"""Tier 0 under watch in production: a sample of its answers asked of the cheap model too,
tested against its certified target, and tier 0 withdrawn the moment the test rejects.

The promise certified (docs/CALIBRATION.md, "Tier 0") is over all traffic: the share of
requests tier 0 answers *differently from the routed answer* is at most ``1 - T``. The cheap
tier feeds it as the strong tier feeds the agreement watch (``calibration/live.py``,
``tier0_watch``; the e-process of ``calibration/monitor.py``): a request tier 0 declines is a
unit that agrees by definition (probability 1); a tier-0 answer is asked of the cheap model
too with probability ``sample_rate`` (ESCALATOR_TIER0_SAMPLE_RATE), and that sampled unit
agrees when the final routed answer has tier 0's label. The reference is the certified one:
the cheap answer when the thresholds in force accept it; when they would escalate it (or the
cheap model refuses), the strong model's answer, asked by the cheap tier in real time for this
measurement (``CheapHandler._sampled``; a strong refusal is the task's ``refusal_label``, none
differs; an invalid strong answer differs). A sample either model cannot answer for that
record is no unit. Before 2026-12-07 an escalated sample counted as differing, so where the
cheap model escalates much (B9's world: about 75% of texts) the test withdrew a tier 0 that
agreed with the final answer 96% of the time (BENCHMARKS.md, B9).

When the test rejects, :meth:`Watched.withdraw` sets ``active`` false: from the next record
on, the cheap tier never asks tier 0 again in this process and every request goes to the
models; ``escalator_tier0_active`` drops to 0, ``escalator_tier0_withdrawals_total`` counts
it and an ERROR line ``tier0_withdrawn`` says so. The withdrawal is remembered
(tier0/state.py, :class:`~escalator.tier0.state.Remembered`, through ``on_withdraw``): a
restart with the same artefact starts withdrawn (:meth:`Watched.withdraw` with the recorded
withdrawal) until ESCALATOR_TIER0_FILE names a newly certified artefact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from escalator.calibration.live import LivePromise, tier0_watch
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics
from escalator.tier0.state import Withdrawal

logger = logging.getLogger("escalator.tier0")


class Artefact(Protocol):
    """What the watch needs of a certified artefact (``artefact.Loaded``)."""

    @property
    def version(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def target(self) -> float: ...
    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]: ...


class Watched:
    """A certified artefact with its live test: what the cheap tier asks (``tiers/handlers.py``,
    ``LocalAnswers``)."""

    def __init__(
        self,
        loaded: Artefact,
        *,
        sample_rate: float,
        live: LivePromise | None,
        metrics: Metrics,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.loaded = loaded
        self.sample_rate = sample_rate
        self.live = live
        self.active = True
        #: Told of each withdrawal the live test makes (tier0/state.py records it).
        self.on_withdraw: Callable[[Withdrawal], None] | None = None
        self._metrics = metrics
        self._clock_ms = clock_ms
        metrics.tier0_active.labels(loaded.version).set(1)

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def threshold(self) -> float:
        return self.loaded.threshold

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        return self.loaded.predict(texts)

    def observe(self, loss: float, probability: float) -> None:
        """One unit (module docstring); withdraws tier 0 when the test rejects."""
        if self.live is None or not self.active:
            return
        self.live.observe(loss, probability)
        if self.live.monitor.rejected:
            self.withdraw()

    def withdraw(self, remembered: Withdrawal | None = None) -> None:
        """Tier 0 off in this process: by the live test's rejection, or at start-up by a
        withdrawal of this version recorded earlier (``remembered``: logged, not counted again
        in ``escalator_tier0_withdrawals_total``, not recorded again)."""
        if not self.active:
            return
        self.active = False
        version = self.loaded.version
        self._metrics.tier0_active.labels(version).set(0)
        if remembered is not None:
            _log("tier0_still_withdrawn", version, remembered, withdrawn_at_ms=remembered.at_ms)
            return
        self._metrics.tier0_withdrawals.labels(version).inc()
        monitor = self.live.monitor if self.live is not None else None
        withdrawal = Withdrawal(
            version,
            self._clock_ms(),
            self.loaded.target,
            round(monitor.evalue, 3) if monitor is not None else None,
            monitor.observations if monitor is not None else None,
        )
        _log("tier0_withdrawn", version, withdrawal)
        if self.on_withdraw is not None:
            self.on_withdraw(withdrawal)


def _log(event: str, version: str, withdrawal: Withdrawal, **at: int) -> None:
    """The ERROR line of a withdrawal, new or remembered (``at``: when it was recorded)."""
    log(
        logger,
        event,
        logging.ERROR,
        version=version,
        **at,
        target=withdrawal.target,
        evalue=withdrawal.evalue,
        observations=withdrawal.observations,
    )


def watched(loaded: Artefact, *, sample_rate: float, alpha: float, metrics: Metrics) -> Watched:
    """Tier 0 as the cheap tier runs it: ESCALATOR_TIER0_SAMPLE_RATE, ESCALATOR_MONITOR_ALPHA."""
    live = tier0_watch(
        loaded.target, loaded.version, alpha=alpha, sample_rate=sample_rate, metrics=metrics
    )
    return Watched(loaded, sample_rate=sample_rate, live=live, metrics=metrics)
