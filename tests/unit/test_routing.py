"""Routing policy, table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalator.contract.messages import Attempt
from escalator.tiers.routing import Thresholds, route


def answer(label: str | None, confidence: float, valid: bool = True) -> Attempt:
    return Attempt("cheap", "m", label, confidence, valid)


PER_LABEL = Thresholds(0.7, {"safe": 0.9, "unsafe": 0.5})


@pytest.mark.parametrize(
    ("attempt", "thresholds", "expected"),
    [
        (answer("safe", 0.7), Thresholds(0.7), ("accept", None)),  # at the threshold: accept
        (answer("safe", 0.6999), Thresholds(0.7), ("escalate", "low_confidence")),
        (answer("unsafe", 1.0), Thresholds(0.7), ("accept", None)),
        (answer("safe", 0.0), Thresholds(0.0), ("accept", None)),
        (answer("safe", 1.0), Thresholds(1.0), ("accept", None)),
        (answer("safe", 0.99), Thresholds(1.0), ("escalate", "low_confidence")),
        (answer("safe", 0.85), PER_LABEL, ("escalate", "low_confidence")),  # safe must be surer
        (answer("unsafe", 0.55), PER_LABEL, ("accept", None)),
        (answer("review-needed", 0.69), PER_LABEL, ("escalate", "low_confidence")),  # default
        (answer("review-needed", 0.7), PER_LABEL, ("accept", None)),
        (answer(None, 0.0, valid=False), Thresholds(0.0), ("escalate", "invalid_answer")),
        (answer("safe", 0.99, valid=False), Thresholds(0.5), ("escalate", "invalid_answer")),
    ],
)
def test_route(attempt: Attempt, thresholds: Thresholds, expected: tuple[str, str | None]) -> None:
    """Accept at or above the label's threshold; escalate below it or when invalid."""
    assert route(attempt, thresholds) == expected


def test_threshold_file_carries_the_calibrated_escalation_interval(tmp_path: Path) -> None:
    from escalator.calibration.threshold_file import load_threshold_file, write_threshold_file

    body = {
        "schema_version": 1,
        "threshold": 0.8,
        "label_thresholds": {"safe": 0.9},
        "models": {"cheap": "c", "strong": "s"},
        "estimates": {"escalation_rate": [0.18, 0.2, 0.22]},
    }
    path = tmp_path / "t.json"
    version = write_threshold_file(path, body)
    loaded = load_threshold_file(path, labels=("safe", "unsafe"), cheap_model="c", strong_model="s")
    assert loaded.version == version
    assert loaded.expected_escalation == (0.18, 0.2, 0.22)
    # A file without estimates (hand-written) still loads, with no interval to alert on.
    del body["estimates"]
    write_threshold_file(path, body)
    loaded = load_threshold_file(path, labels=("safe", "unsafe"), cheap_model="c", strong_model="s")
    assert loaded.expected_escalation is None
