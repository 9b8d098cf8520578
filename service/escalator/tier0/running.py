"""Tier 0 as a part of the running service: what the cheap row of the tier table runs beside
its worker when ``ESCALATOR_TIER0_FILE`` names a certified artefact (``app.load_parts`` gives
the row this ``beside`` once the artefact is loaded and checked).

It builds tier 0 under its live test (``watch.py``: ESCALATOR_TIER0_SAMPLE_RATE,
ESCALATOR_MONITOR_ALPHA), remembers its withdrawals on the tier-0 state topic (``state.py``:
read before the tiers consume, recorded as they happen), and hands the handlers the strong
model's caller: the live test asks it what the cheap tier would escalate (the cheap row's
``also``)."""

from __future__ import annotations

import dataclasses

from escalator.tier0.artefact import Loaded
from escalator.tier0.state import KafkaWithdrawals, Remembered
from escalator.tier0.watch import watched
from escalator.tiers.table import BesideFactory, Besides, HandlerParts, Process


def beside(loaded: Loaded) -> BesideFactory:
    def build(process: Process, parts: HandlerParts) -> tuple[HandlerParts, Besides]:
        settings = process.settings
        r = settings.routing
        tier0 = watched(
            loaded, sample_rate=r.tier0_sample_rate, alpha=r.monitor_alpha, metrics=parts.metrics
        )
        withdrawals = KafkaWithdrawals(
            settings.kafka, settings.topics.tier0_state, process.producer
        )
        strong = process.models["strong"].caller
        return dataclasses.replace(parts, tier0=tier0, strong=strong), [
            Remembered(tier0, withdrawals)
        ]

    return build
