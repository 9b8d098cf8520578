"""The versioned threshold file that ``escalator calibrate`` writes and ``escalator run`` loads.

It records how the thresholds were chosen, so that a rollout can be reviewed: the objective and
target, the dataset's hash and size, the models, the price-table version, and the estimates with
their 95% intervals at the chosen point. ``version`` is derived from the content, and every
decision and result names the version in force.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from escalator.errors import ConfigError
from escalator.routing import Thresholds

FILE_SCHEMA_VERSION = 1


def content_version(body: dict[str, Any]) -> str:
    raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return "cal-" + hashlib.sha256(raw).hexdigest()[:10]


def write_threshold_file(path: Path, body: dict[str, Any]) -> str:
    """Write the file with its content-derived version; return the version."""
    body = {k: v for k, v in body.items() if k != "version"}
    version = content_version(body)
    doc = {"schema_version": FILE_SCHEMA_VERSION, "version": version, **body}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return version


def load_threshold_file(
    path: Path, *, labels: tuple[str, ...], cheap_model: str, strong_model: str
) -> Thresholds:
    """Thresholds from a calibration file; refuse one made for other models or labels."""
    name = f"ESCALATOR_THRESHOLDS_FILE={path}"
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema_version") != FILE_SCHEMA_VERSION:
        raise ConfigError(f"{name}: not a version-{FILE_SCHEMA_VERSION} threshold file")
    models = doc.get("models") or {}
    if models.get("cheap") != cheap_model or models.get("strong") != strong_model:
        raise ConfigError(
            f"{name}: calibrated for {models.get('cheap')} -> {models.get('strong')}, "
            f"but the service runs {cheap_model} -> {strong_model}; calibrate again"
        )
    threshold = doc.get("threshold")
    per_label = doc.get("label_thresholds") or {}
    if not isinstance(threshold, int | float) or not isinstance(per_label, dict):
        raise ConfigError(f"{name}: 'threshold' must be a number, 'label_thresholds' an object")
    unknown = set(per_label) - set(labels)
    if unknown:
        raise ConfigError(f"{name}: labels not in the task: {', '.join(sorted(unknown))}")
    rate = (doc.get("estimates") or {}).get("escalation_rate")
    expected = None
    if isinstance(rate, list) and len(rate) == 3 and all(isinstance(x, int | float) for x in rate):
        expected = (float(rate[0]), float(rate[1]), float(rate[2]))
    return Thresholds(
        default=float(threshold),
        per_label={str(k): float(v) for k, v in per_label.items()},
        version=str(doc.get("version")),
        expected_escalation=expected,
    )
