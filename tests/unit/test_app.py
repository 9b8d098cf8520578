"""The wiring (app.py): ``load_parts`` validates what the service is built from before a
socket opens; here, tier 0's artefact (ESCALATOR_TIER0_FILE): loaded for the cheap tier only,
refused at start-up, naming the variable, when it does not fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from escalator.app import load_parts
from escalator.config import load_settings
from escalator.errors import ConfigError
from escalator.model.task import load_task
from escalator.tier0 import artefact
from escalator.tier0.model import Features
from escalator.tier0.train import fit

TASK = load_task(None)
CHEAP, STRONG = "claude-haiku-5-5", "claude-sonnet-5-5"


def write_artefact(tmp_path: Path, **changes: Any) -> Path:
    """A certified artefact for the bundled task and the default model pair (or ``changes``)."""
    texts = ["have a nice day", "i will hurt you", "is this allowed here"] * 4
    model = fit(texts, [TASK.labels[i % 3] for i in range(len(texts))], features=Features(bits=12))
    path = tmp_path / "tier0.json"
    body: dict[str, Any] = {
        "status": "certified",
        "task": {"name": TASK.name, "fingerprint": TASK.fingerprint, "labels": list(TASK.labels)},
        "models": {"cheap": CHEAP, "strong": STRONG},
        "classes": list(model.classes),
        "features": model.features.as_json(),
        "weights": artefact.write_weights(model, path),
        "threshold": 0.9,
        "certification": {"target": 0.98},
    }
    body.update(changes)
    artefact.write_manifest(path, body)
    return path


def _settings(path: Path) -> Any:
    return load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
            "ESCALATOR_CHEAP_MODEL": CHEAP,
            "ESCALATOR_STRONG_MODEL": STRONG,
            "ESCALATOR_TIER0_FILE": str(path),
        }
    )


def test_a_fitting_artefact_is_loaded_for_the_cheap_tier_only(tmp_path: Path) -> None:
    path = write_artefact(tmp_path)
    parts = load_parts(_settings(path), ["cheap", "strong"])
    assert parts.tier0 is not None and parts.tier0.threshold == 0.9
    assert parts.tier0.predict(["have a nice day"])[0][0] in TASK.labels
    assert load_parts(_settings(path), ["strong"]).tier0 is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": {"cheap": "claude-haiku-4-5", "strong": STRONG}}, "learned from"),
        ({"task": {"name": "x", "fingerprint": "other", "labels": ["a", "b"]}}, "fingerprint"),
        ({"status": "trained", "threshold": None}, "not certified"),
    ],
)
def test_an_artefact_that_does_not_fit_is_a_start_up_error_naming_the_variable(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = write_artefact(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message) as err:
        load_parts(_settings(path), ["cheap", "strong"])
    assert str(err.value).startswith("ESCALATOR_TIER0_FILE=")
    assert "\n" not in str(err.value)


def test_a_missing_file_is_refused_when_settings_are_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ESCALATOR_TIER0_FILE"):
        _settings(tmp_path / "absent.json")
