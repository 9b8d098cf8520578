"""Pure routing policy: a cheap answer plus thresholds -> accept or escalate.

The rule stays dumb on purpose: escalate when the answer is invalid or its confidence is below
the threshold for its label (a per-label threshold if set, else the global one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from escalator.contract.messages import Attempt

Route = Literal["accept", "escalate"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    #: For labels not in per_label: ESCALATOR_THRESHOLD or a thresholds file's (no default
    #: here; the settings' is in config.py).
    default: float
    per_label: Mapping[str, float] = field(default_factory=dict)
    version: str = "default"
    #: (low, expected, high) escalation rate that calibration predicted for these thresholds,
    #: with its 95% interval; None when the thresholds were set by hand.
    expected_escalation: tuple[float, float, float] | None = None
    #: The human tier (off unless ESCALATOR_HUMAN_TIER is on): the strong tier hands a request
    #: to review when its confidence is below this (per label if set). None: from the settings
    #: (ESCALATOR_STRONG_THRESHOLD); a threshold file written by calibrate may carry its own.
    strong_default: float | None = None
    strong_per_label: Mapping[str, float] = field(default_factory=dict)

    def for_label(self, label: str | None) -> float:
        if label is not None and label in self.per_label:
            return self.per_label[label]
        return self.default

    def strong_for(self, label: str | None) -> float:
        """The strong tier's review threshold for ``label`` (0: never review on confidence)."""
        if label is not None and label in self.strong_per_label:
            return self.strong_per_label[label]
        return self.strong_default if self.strong_default is not None else 0.0


def route(answer: Attempt, thresholds: Thresholds) -> tuple[Route, str | None]:
    """Return the route and, when escalating, why."""
    if not answer.valid or answer.label is None:
        return "escalate", "invalid_answer"
    if answer.confidence >= thresholds.for_label(answer.label):
        return "accept", None
    return "escalate", "low_confidence"
