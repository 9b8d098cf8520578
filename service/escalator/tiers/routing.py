"""Pure routing policy: a cheap answer plus thresholds -> accept or escalate; and which
thresholds are in force (:func:`thresholds_in_force`), checked against the task's labels.

The rule stays dumb on purpose: escalate when the answer is invalid or its confidence is below
the threshold for its label (a per-label threshold if set, else the global one).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from escalator.config import RoutingSettings, Settings
from escalator.contract.messages import Attempt
from escalator.errors import ConfigError

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


def thresholds_from(routing: RoutingSettings) -> Thresholds:
    """ESCALATOR_THRESHOLD and ESCALATOR_LABEL_THRESHOLDS, versioned by their values."""
    raw = f"{routing.threshold}|{sorted(routing.label_thresholds.items())}"
    return Thresholds(
        default=routing.threshold,
        per_label=dict(routing.label_thresholds),
        version="env-" + hashlib.sha256(raw.encode()).hexdigest()[:8],
    )


def thresholds_in_force(
    settings: Settings, labels: Sequence[str], from_file: Thresholds | None
) -> Thresholds:
    """The thresholds the tiers route by: a thresholds file's (``from_file``, read by
    ``calibration/threshold_file.py``), else the settings'; the strong tier's review
    thresholds from the settings unless the file carries its own. A ConfigError names the
    variable that names a label the task does not have."""
    thresholds = from_file if from_file is not None else thresholds_from(settings.routing)
    if thresholds.strong_default is None:
        thresholds = dataclasses.replace(
            thresholds,
            strong_default=settings.review.strong_threshold,
            strong_per_label=dict(settings.review.strong_label_thresholds),
        )
    unknown_strong = set(thresholds.strong_per_label) - set(labels)
    if unknown_strong:
        raise ConfigError(
            "ESCALATOR_STRONG_LABEL_THRESHOLDS names labels not in the task: "
            + ", ".join(sorted(unknown_strong))
        )
    unknown = set(thresholds.per_label) - set(labels)
    if unknown:
        raise ConfigError(
            f"ESCALATOR_LABEL_THRESHOLDS names labels not in the task: {', '.join(sorted(unknown))}"
        )
    return thresholds


def escalation_note(thresholds: Thresholds, thresholds_file: Path | None) -> str | None:
    """A warning when every threshold is above 1: then every request escalates."""
    if min([thresholds.default, *thresholds.per_label.values()]) <= 1:
        return None
    where = (
        f"ESCALATOR_THRESHOLDS_FILE={thresholds_file}"
        if thresholds_file is not None
        else "the thresholds"
    )
    return (
        f"{where}: every request escalates (every threshold is above 1): each costs a "
        "cheap and a strong call, about 20x the cheap tier alone"
    )
