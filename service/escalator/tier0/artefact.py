"""The tier-0 artefact: a JSON manifest and the weights beside it, versioned by content.

Two files, ``NAME.json`` (the manifest) and ``NAME.npz`` (the weights). Nothing is pickled:
the weights are two numpy arrays in an ``.npz`` read with ``allow_pickle=False`` (an archive
holding an object array is refused by numpy itself), and the manifest records the weights'
SHA-256, checked before they are read, so a manifest never loads weights it was not made
with. The model is rebuilt from arrays and the feature description (``model.Features``); no
code comes from the files. (skops would also avoid pickle, but it serialises estimator
objects; there is no estimator to keep here, only arrays.)

The manifest says what tier 0 is and may do (``manifest``): the task (name, fingerprint of
its labels and instructions, label set) and the model pair whose final answers it learned
from, the features, the training window and its data's hash, and, once ``escalator tier0
certify`` has run, the certified threshold, the certification window and the guarantee. Its
``version`` is derived from its content (weights hash included); the service refuses a
manifest made for another task, label set or model pair (``load``), or one not certified.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from escalator.errors import ConfigError
from escalator.tier0.model import Features, Tier0Error, Tier0Model

SCHEMA_VERSION = 1
KIND = "escalator-tier0"


def weights_path(manifest_path: Path) -> Path:
    return manifest_path.with_suffix(".npz")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_version(body: dict[str, Any]) -> str:
    raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return "t0-" + hashlib.sha256(raw).hexdigest()[:10]


def write_weights(model: Tier0Model, manifest_path: Path) -> dict[str, Any]:
    """Write the weights beside the manifest; return the manifest's ``weights`` entry."""
    path = weights_path(manifest_path)
    with path.open("wb") as f:
        np.savez_compressed(f, weights=model.weights, intercept=model.intercept)
    return {
        "file": path.name,
        "sha256": _sha256(path),
        "format": "numpy .npz, allow_pickle=False: weights (columns, labels) float32, "
        "intercept (labels,) float32",
    }


def write_manifest(path: Path, body: dict[str, Any]) -> str:
    """Write the manifest with its content-derived version; return the version."""
    body = {k: v for k, v in body.items() if k not in ("version", "schema_version", "kind")}
    version = content_version(body)
    doc = {"schema_version": SCHEMA_VERSION, "kind": KIND, "version": version, **body}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return version


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise Tier0Error(f"{path}: not valid JSON ({exc})") from exc
    if (
        not isinstance(doc, dict)
        or doc.get("kind") != KIND
        or doc.get("schema_version") != SCHEMA_VERSION
    ):
        raise Tier0Error(f"{path}: not a version-{SCHEMA_VERSION} tier-0 manifest")
    return doc


def read_model(path: Path, doc: dict[str, Any]) -> Tier0Model:
    """The model a manifest describes, its weights checked against the recorded hash."""
    weights = doc.get("weights") or {}
    classes = doc.get("classes")
    if not isinstance(weights, dict) or not isinstance(weights.get("file"), str):
        raise Tier0Error(f"{path}: no 'weights' file named")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise Tier0Error(f"{path}: 'classes' must be a list of labels")
    file = path.parent / Path(weights["file"]).name  # never a path outside the folder
    if _sha256(file) != weights.get("sha256"):
        raise Tier0Error(f"{file}: its SHA-256 is not the one {path.name} records")
    with np.load(file, allow_pickle=False) as npz:
        try:
            w, b = npz["weights"], npz["intercept"]
        except KeyError as exc:
            raise Tier0Error(f"{file}: no {exc} array") from exc
    return Tier0Model(
        features=Features.from_json(doc.get("features")),
        classes=tuple(classes),
        weights=np.asarray(w, np.float32),
        intercept=np.asarray(b, np.float32),
    )


@dataclass(frozen=True)
class Loaded:
    """A certified artefact, as the service uses it."""

    version: str
    model: Tier0Model
    threshold: float
    target: float
    manifest: dict[str, Any]

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(label, confidence) per text: what the cheap tier's hook asks (``tiers/handlers.py``,
        ``LocalAnswers``)."""
        return self.model.predict(texts)


def load(
    path: Path,
    *,
    task_fingerprint: str,
    labels: tuple[str, ...],
    cheap_model: str,
    strong_model: str,
    name: str = "ESCALATOR_TIER0_FILE",
) -> Loaded:
    """A certified artefact for this task and model pair, or a ConfigError naming ``name``."""
    where = f"{name}={path}"
    try:
        doc = read_manifest(path)
        model = read_model(path, doc)
    except (Tier0Error, OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    task = doc.get("task") or {}
    if task.get("fingerprint") != task_fingerprint:
        raise ConfigError(
            f"{where}: trained for task {task.get('name')!r} (fingerprint "
            f"{task.get('fingerprint')}), but the service runs fingerprint {task_fingerprint}: "
            "its labels or instructions changed; train and certify again"
        )
    if tuple(task.get("labels") or ()) != labels or not set(model.classes) <= set(labels):
        raise ConfigError(f"{where}: made for the labels {task.get('labels')}, not {list(labels)}")
    models = doc.get("models") or {}
    if models != {"cheap": cheap_model, "strong": strong_model}:
        raise ConfigError(
            f"{where}: learned from {models.get('cheap')} -> {models.get('strong')}, but the "
            f"service runs {cheap_model} -> {strong_model}; train and certify again"
        )
    cert = doc.get("certification") or {}
    threshold, target = doc.get("threshold"), cert.get("target")
    if (
        doc.get("status") != "certified"
        or not isinstance(threshold, int | float)
        or not isinstance(target, int | float)
        or not _fraction(threshold)
        or not _fraction(target)
    ):
        raise ConfigError(
            f"{where}: not certified (status {doc.get('status')!r}): run escalator tier0 "
            "certify on a later window first"
        )
    return Loaded(
        version=str(doc.get("version")),
        model=model,
        threshold=float(threshold),
        target=float(target),
        manifest=doc,
    )


def _fraction(x: object) -> bool:
    return (
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x <= 1
    )
