"""Routing policy, table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalator.config import Settings, load_settings
from escalator.contract.messages import Attempt
from escalator.errors import ConfigError
from escalator.tiers.routing import Thresholds, escalation_note, route, thresholds_in_force


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


def _settings(**env: str) -> Settings:
    return load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", **env})


LABELS = ("safe", "unsafe", "review-needed")


def test_without_a_file_the_settings_thresholds_are_in_force_versioned_by_value() -> None:
    """ESCALATOR_THRESHOLD and ESCALATOR_LABEL_THRESHOLDS, with a version that changes with
    them; the strong tier's review thresholds come from the settings."""
    s = _settings(
        ESCALATOR_THRESHOLD="0.8",
        ESCALATOR_LABEL_THRESHOLDS="safe=0.9",
        ESCALATOR_STRONG_THRESHOLD="0.6",
    )
    t = thresholds_in_force(s, LABELS, None)
    assert (t.default, dict(t.per_label), t.strong_default) == (0.8, {"safe": 0.9}, 0.6)
    assert t.version.startswith("env-")
    other = thresholds_in_force(_settings(ESCALATOR_THRESHOLD="0.81"), LABELS, None)
    assert other.version != t.version
    assert thresholds_in_force(_settings(ESCALATOR_THRESHOLD="0.8"), LABELS, None).version == (
        thresholds_in_force(_settings(ESCALATOR_THRESHOLD="0.8"), LABELS, None).version
    )


def test_a_files_thresholds_win_and_keep_their_own_strong_thresholds() -> None:
    """A file's thresholds are in force; its strong thresholds are kept when it has them,
    filled from the settings when it has none."""
    s = _settings(ESCALATOR_THRESHOLD="0.1", ESCALATOR_STRONG_THRESHOLD="0.6")
    own = Thresholds(0.7, {}, "file-1", strong_default=0.4, strong_per_label={"safe": 0.5})
    assert thresholds_in_force(s, LABELS, own) == own
    bare = thresholds_in_force(s, LABELS, Thresholds(0.7, version="file-2"))
    assert (bare.default, bare.version, bare.strong_default) == (0.7, "file-2", 0.6)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ESCALATOR_LABEL_THRESHOLDS": "spam=0.9"}, "ESCALATOR_LABEL_THRESHOLDS"),
        ({"ESCALATOR_STRONG_LABEL_THRESHOLDS": "spam=0.9"}, "ESCALATOR_STRONG_LABEL_THRESHOLDS"),
    ],
)
def test_a_threshold_for_a_label_the_task_lacks_names_its_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} names labels not in the task: spam$"):
        thresholds_in_force(_settings(**env), LABELS, None)


@pytest.mark.parametrize(
    ("thresholds", "file", "expected"),
    [
        (Thresholds(0.7), None, None),
        (Thresholds(1.01, {"safe": 0.5}), None, None),
        (Thresholds(1.01), None, "the thresholds: every request escalates"),
        (Thresholds(1.01, {"safe": 2.0}), Path("t.json"), "ESCALATOR_THRESHOLDS_FILE=t.json:"),
    ],
)
def test_everything_escalating_is_noted(
    thresholds: Thresholds, file: Path | None, expected: str | None
) -> None:
    """Only when every threshold is above 1, naming the file when there is one."""
    note = escalation_note(thresholds, file)
    if expected is None:
        assert note is None
    else:
        assert note is not None and note.startswith(expected)
