"""The tier-0 artefact (tier0/artefact.py): what it records, and what the service refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from escalator.errors import ConfigError
from escalator.tier0 import artefact
from escalator.tier0.model import Features
from escalator.tier0.train import fit

TASK = {"name": "support", "fingerprint": "abc123", "labels": ["billing", "other", "spam"]}
MODELS = {"cheap": "claude-haiku-4-5", "strong": "claude-sonnet-4-5"}


def _write(tmp_path: Path, **changes: Any) -> Path:
    model = fit(
        ["refund my card", "hello there", "win a prize now", "card charged twice"] * 3,
        ["billing", "other", "spam", "billing"] * 3,
        features=Features(bits=12),
    )
    path = tmp_path / "tier0.json"
    body: dict[str, Any] = {
        "status": "certified",
        "task": TASK,
        "models": MODELS,
        "classes": list(model.classes),
        "features": model.features.as_json(),
        "weights": artefact.write_weights(model, path),
        "threshold": 0.9,
        "certification": {"target": 0.98},
    }
    body.update(changes)
    artefact.write_manifest(path, body)
    return path


def _load(path: Path, **changes: Any) -> artefact.Loaded:
    kwargs: dict[str, Any] = {
        "task_fingerprint": "abc123",
        "labels": ("billing", "other", "spam"),
        "cheap_model": MODELS["cheap"],
        "strong_model": MODELS["strong"],
    }
    kwargs.update(changes)
    return artefact.load(path, **kwargs)


def test_a_certified_artefact_loads_and_predicts_as_it_was_saved(tmp_path: Path) -> None:
    """Round trip: same weights, same predictions; the version is derived from the content."""
    path = _write(tmp_path)
    loaded = _load(path)
    assert loaded.version.startswith("t0-") and loaded.threshold == 0.9
    assert loaded.model.predict(["refund my card please"])[0][0] == "billing"
    again = _write(tmp_path, threshold=0.8)
    assert _load(again).version != loaded.version


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task_fingerprint": "other"}, "fingerprint"),
        ({"labels": ("billing", "spam")}, "labels"),
        ({"cheap_model": "claude-opus-4-5"}, "learned from"),
        ({"strong_model": "claude-opus-4-5"}, "learned from"),
    ],
)
def test_the_service_refuses_another_task_label_set_or_model_pair(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    """Each mismatch is a ConfigError naming ESCALATOR_TIER0_FILE and what differs."""
    path = _write(tmp_path)
    with pytest.raises(ConfigError, match=message) as err:
        _load(path, **changes)
    assert "ESCALATOR_TIER0_FILE=" in str(err.value)


def test_an_uncertified_artefact_is_refused(tmp_path: Path) -> None:
    """Trained but not certified (threshold null): it must not answer."""
    path = _write(tmp_path, status="trained", threshold=None, certification=None)
    with pytest.raises(ConfigError, match="not certified"):
        _load(path)


def test_weights_that_are_not_the_ones_recorded_are_refused(tmp_path: Path) -> None:
    """Changed weights (their SHA-256 differs from the manifest's) are never read."""
    path = _write(tmp_path)
    npz = artefact.weights_path(path)
    with npz.open("wb") as f:
        np.savez(f, weights=np.ones((4096, 3), np.float32), intercept=np.zeros(3, np.float32))
    with pytest.raises(ConfigError, match="SHA-256"):
        _load(path)


def test_an_object_array_is_refused_even_with_a_matching_hash(tmp_path: Path) -> None:
    """No pickle: weights saved as an object array (which would unpickle) are refused by
    numpy's allow_pickle=False, even when the manifest records their hash."""
    path = _write(tmp_path)
    npz = artefact.weights_path(path)
    with npz.open("wb") as f:
        np.savez(f, weights=np.array([{"x": 1}], dtype=object), intercept=np.zeros(3))
    doc = artefact.read_manifest(path)
    doc["weights"]["sha256"] = artefact._sha256(npz)
    artefact.write_manifest(path, doc)
    with pytest.raises(ConfigError, match="pickle"):
        _load(path)


def test_a_file_that_is_not_a_manifest_is_refused(tmp_path: Path) -> None:
    """Not JSON, or JSON of another kind: one error naming the variable."""
    path = tmp_path / "x.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        _load(path)
    path.write_text('{"schema_version": 1}')
    with pytest.raises(ConfigError, match="not a version-1 tier-0 manifest"):
        _load(path)
