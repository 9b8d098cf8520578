"""The versioned threshold file that ``escalator calibrate`` writes and ``escalator run`` loads,
and the ledger of calibration attempts beside it.

The file records how the thresholds were chosen, so that a rollout can be reviewed: the
objective and target, the certification procedure with its delta and attempt number, the
window it was certified on, the dataset's hash and size, the models, the price-table version,
and the estimates at the chosen point (the escalation rate with its 95% interval, which the
drift alert compares with). ``version`` is derived from the content, and every decision and
result names the version in force.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from escalator.errors import ConfigError
from escalator.tiers.routing import Thresholds

if TYPE_CHECKING:
    # The service loads this module at start-up; the search (and numpy) only when calibrating.
    from escalator.calibration import adjudications as hum
    from escalator.calibration import curves, dataset, search

FILE_SCHEMA_VERSION = 1
#: The largest threshold a file may hold: dataset.STRONG_ONLY, above every confidence
#: (everything escalates; what a refusal with ``--fallback escalate-all`` writes). Anything
#: else above 1 is a typo that would escalate everything at about 20x the cost.
MAX_THRESHOLD = 1.01

#: The cheap-confidence histogram of the window: bins of this width over [0, 1].
HISTOGRAM_BINS = 100
#: What the quality guarantee assumes (the file's ``procedure.assumptions``).
QUALITY_ASSUMPTIONS = (
    "requests independent and identically distributed over the window, every threshold "
    "version alike (traffic like the window's)",
    "shadow sampling (and shedding under rate-limit pressure) ignored the answers",
    "a strong answer that was due but is missing or invalid counted as a disagreement",
)


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


def confidence_histogram(data: dataset.Dataset) -> dict[str, Any]:
    """The window's cheap confidences (``HISTOGRAM_BINS`` bins of [0, 1]; the last bin holds
    1.0) and its invalid or refused cheap answers: the reference the live confidence-drift
    test compares with (calibration/monitor.py)."""
    import numpy as np

    valid = data.conf[data.conf >= 0]
    bins = np.minimum((valid * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    counts = np.bincount(bins, minlength=HISTOGRAM_BINS)
    return {
        "bin_width": 1.0 / HISTOGRAM_BINS,
        "counts": [int(x) for x in counts],
        "invalid": int((data.conf < 0).sum()),
        "requests": int(data.n),
    }


def estimates_at(data: dataset.Dataset, result: search.Calibration) -> dict[str, Any]:
    """The file's estimates at the chosen point (escalation as [low, point, high])."""
    from escalator.calibration.search import routed_escalation

    c, i = result.curve, result.chosen
    return {
        "escalation_rate": list(routed_escalation(data, result)),
        "agreement_with_strong": {
            "point": float(c.agreement[i]),
            "lower_bound": float(c.agreement_lower[i]),
            "level": 1 - c.delta,
        },
        "accuracy_vs_gold": None if c.accuracy is None else float(c.accuracy[i]),
        "cost_per_1k_usd": float(c.cost_per_1k[i]),
    }


def threshold_body(
    result: search.Calibration,
    data: dataset.Dataset,
    *,
    source: str,
    delta: float,
    window: dict[str, Any],
    price_table_version: str,
    base: curves.Baselines,
    ledger: Path | None = None,
    attempt: int | None = None,
    fallback: bool = False,
    detail: bool = True,
) -> dict[str, Any]:
    """The body of a threshold file (what :func:`write_threshold_file` versions and writes).

    ``delta`` is the whole error budget; ``result.delta`` is the share this attempt spent
    (attempt number ``attempt`` of the ``ledger``, or all of it with no ledger). ``fallback``:
    written on a refusal by ``--fallback escalate-all``. ``detail=False`` is the short form
    ``escalator demo`` writes: no spending, margin or guarantee in the procedure, no per-label
    rows, the dataset's hash and size only, no baselines; ``window`` is stored as given.
    """
    from escalator.calibration.dataset import STRONG_ONLY
    from escalator.calibration.render import guarantee
    from escalator.calibration.search import PROCEDURE

    quality = result.objective == "quality"
    procedure: dict[str, Any] = {
        "name": PROCEDURE if quality else f"{result.objective} (no guarantee)",
        "delta": delta,
    }
    if detail:
        procedure["delta_spent"] = result.delta
    procedure["attempt"] = attempt if ledger is not None else None
    if detail:
        procedure |= _spending(ledger) | {
            "margin": result.margin,
            "guarantee": guarantee(result, result.delta) if quality else None,
            "assumptions": list(QUALITY_ASSUMPTIONS) if quality else None,
        }
    body: dict[str, Any] = {
        "created_from": source,
        "objective": {"name": result.objective, "target": result.target},
        "procedure": procedure,
        "window": window,
        "status": "fallback: escalate all" if fallback else result.status,
        "threshold": result.threshold if result.status != "refused" else STRONG_ONLY,
        "label_thresholds": result.label_thresholds,
    }
    if detail:
        body["labels"] = [vars(r) for r in result.labels]
    body["models"] = {"cheap": data.cheap_model, "strong": data.strong_model}
    body["price_table_version"] = price_table_version
    dataset: dict[str, Any] = {"sha256": data.fingerprint(), "requests": data.n}
    if detail:
        dataset |= {
            "strong_answers": int(data.observed.sum()),
            "shadowed": int(data.shadowed.sum()),
            "gold_labels": int((data.gold >= 0).sum()),
            "threshold_versions_seen": list(data.strata),
        }
    body["dataset"] = dataset
    body["estimates"] = estimates_at(data, result)
    body["confidence_histogram"] = confidence_histogram(data)
    if detail:
        body["baselines"] = {
            "cheap_only": base.cheap_only,
            "strong_only": base.strong_only,
            "random_same_rate": base.random_same_rate,
            "oracle": base.oracle,
        }
    return body


def _spending(ledger: Path | None) -> dict[str, Any]:
    """The procedure's spending rule and ledger (``spent``), as both objectives record them."""
    return {
        "spending": "none (--ledger none)" if ledger is None else SPENDING,
        "ledger": None if ledger is None else str(ledger),
    }


def human_threshold_body(
    result: search.HumanCalibration,
    data: dataset.Dataset,
    sample: hum.HumanSample | None,
    *,
    source: str,
    delta: float,
    window: dict[str, Any],
    price_table_version: str,
    ledger: Path | None,
    attempt: int | None,
    review_labels: list[str],
) -> dict[str, Any]:
    """The body of a threshold file from ``calibrate --objective human``: the cheap threshold
    as ``threshold`` and the strong tier's review threshold under ``strong``. A refused result
    (written by ``--fallback escalate-all``) escalates everything and leaves the strong tier's
    review threshold to its settings: it promises nothing about accuracy against people."""
    from escalator.calibration.curves import interval95
    from escalator.calibration.render import assumptions, human_guarantee
    from escalator.calibration.search import HUMAN_PROCEDURE

    fallback = result.chosen is None
    i, j = result.chosen if result.chosen is not None else (len(result.cheap_grid) - 1, 0)
    # The escalation interval the drift alert compares with, as estimates_at gives it.
    low, high = interval95(round(float(result.escalation[i]) * data.n), data.n)
    escalation = [low, float(result.escalation[i]), high]
    body: dict[str, Any] = {
        "created_from": source,
        "objective": {
            "name": "human",
            "target": result.target,
            "human_budget": result.budget,
            "review_cost_usd": result.review_cost,
        },
        "procedure": {
            "name": HUMAN_PROCEDURE,
            "delta": delta,
            "delta_spent": result.delta,
            "strong_thresholds_tried": [float(x) for x in result.strong_grid],
            "attempt": attempt if ledger is not None else None,
            **_spending(ledger),
            "guarantee": human_guarantee(result, sample),
            "assumptions": None if fallback else assumptions(sample, result.pending),
            "undecided_counted_wrong": result.pending,
            "review_labels": review_labels,
        },
        "window": window,
        "status": "fallback: escalate all" if fallback else result.status,
        "threshold": result.cheap_threshold,
        "label_thresholds": {},
        "models": {"cheap": data.cheap_model, "strong": data.strong_model},
        "price_table_version": price_table_version,
        "dataset": {
            "sha256": data.fingerprint(),
            "requests": data.n,
            "adjudicated": result.adjudicated,
            "threshold_versions_seen": list(data.strata),
        },
        "estimates": {
            "escalation_rate": escalation,
            "human_share": None if fallback else float(result.human[i, j]),
            "accuracy_vs_people": None
            if fallback
            else {
                "point": float(result.accuracy[i, j]),
                "lower_bound": float(result.accuracy_lower[i, j]),
                "level": 1 - result.delta,
            },
            "cost_per_1k_usd": float(result.cost_per_1k[i, j]),
        },
        "confidence_histogram": confidence_histogram(data),
    }
    if not fallback:
        body["strong"] = {"default": result.strong_threshold, "per_label": {}}
    return body


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
    models = doc.get("models")
    if (
        not isinstance(models, dict)
        or not isinstance(models.get("cheap"), str)
        or not isinstance(models.get("strong"), str)
    ):
        raise ConfigError(
            f"{name}: no 'models' naming the cheap and strong model it was calibrated for "
            "(write it with escalator calibrate)"
        )
    if models["cheap"] != cheap_model or models["strong"] != strong_model:
        raise ConfigError(
            f"{name}: calibrated for {models['cheap']} -> {models['strong']}, "
            f"but the service runs {cheap_model} -> {strong_model}; calibrate again"
        )
    threshold = doc.get("threshold")
    per_label = doc.get("label_thresholds") or {}
    if not _number(threshold) or not isinstance(per_label, dict):
        raise ConfigError(f"{name}: 'threshold' must be a number, 'label_thresholds' an object")
    threshold = float(cast(float, threshold))
    _in_range(name, "threshold", threshold)
    for label, value in per_label.items():
        if not _number(value):
            raise ConfigError(f"{name}: label_thresholds[{label!r}] must be a number")
        _in_range(name, f"label_thresholds[{label!r}]", value)
    unknown = set(per_label) - set(labels)
    if unknown:
        raise ConfigError(f"{name}: labels not in the task: {', '.join(sorted(unknown))}")
    rate = (doc.get("estimates") or {}).get("escalation_rate")
    expected = None
    if isinstance(rate, list) and len(rate) == 3 and all(isinstance(x, int | float) for x in rate):
        expected = (float(rate[0]), float(rate[1]), float(rate[2]))
    strong_default, strong_per_label = _strong(doc.get("strong"), name, labels)
    return Thresholds(
        default=float(threshold),
        per_label={str(k): float(v) for k, v in per_label.items()},
        version=str(doc.get("version")),
        expected_escalation=expected,
        strong_default=strong_default,
        strong_per_label=strong_per_label,
    )


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _in_range(name: str, key: str, value: float) -> None:
    if not (0.0 <= value <= 1.0 or value == MAX_THRESHOLD):
        raise ConfigError(
            f"{name}: {key} is {value}; a threshold is a confidence from 0 to 1 (or "
            f"{MAX_THRESHOLD}, escalate everything)"
        )


@dataclass(frozen=True, slots=True)
class Promise:
    """What a thresholds file promises, for the live monitors (calibration/live.py)."""

    version: str
    objective: str  # quality, human, or another objective (no promise)
    target: float
    certified: bool  # False: refused, a fallback, or an objective without a guarantee
    cheap_threshold: float
    strong_threshold: float | None
    review_labels: tuple[str, ...]
    #: The window's cheap-confidence histogram (None in files written before it was stored).
    histogram: tuple[int, ...] | None
    invalid: int


def load_promise(path: Path) -> Promise:
    """The promise of a thresholds file that ``load_threshold_file`` accepted (its optional
    keys read leniently: a file written before they existed promises what it promised)."""
    name_var = f"ESCALATOR_THRESHOLDS_FILE={path}"
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{name_var}: cannot be read as JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{name_var}: not a threshold file")
    objective = doc.get("objective") or {}
    procedure = doc.get("procedure") or {}
    strong = doc.get("strong") or {}
    hist = doc.get("confidence_histogram") or {}
    counts = hist.get("counts") if isinstance(hist, dict) else None
    target = objective.get("target")
    threshold = doc.get("threshold")
    name = str(objective.get("name", "quality"))
    certified = doc.get("status") == "certified" and name in ("quality", "human")
    return Promise(
        version=str(doc.get("version")),
        objective=name,
        target=float(target) if isinstance(target, int | float) else 1.0,
        certified=certified and isinstance(target, int | float) and 0 < target < 1,
        cheap_threshold=float(threshold) if isinstance(threshold, int | float) else 1.01,
        strong_threshold=float(strong["default"])
        if isinstance(strong.get("default"), int | float)
        else None,
        review_labels=tuple(str(x) for x in procedure.get("review_labels") or ()),
        histogram=tuple(int(x) for x in counts)
        if isinstance(counts, list) and all(isinstance(x, int) for x in counts) and counts
        else None,
        invalid=int(hist.get("invalid", 0)) if isinstance(hist, dict) else 0,
    )


def _strong(
    value: object, name: str, labels: tuple[str, ...]
) -> tuple[float | None, dict[str, float]]:
    """The optional ``"strong": {"default": x, "per_label": {...}}`` key (calibrate --objective
    human writes it): the strong tier's review thresholds. Absent: (None, {}), as before."""
    if value is None:
        return None, {}
    number = _number
    per = value.get("per_label", {}) if isinstance(value, dict) else None
    default = value.get("default") if isinstance(value, dict) else None
    if (
        not isinstance(per, dict)
        or not (default is None or number(default))
        or not all(number(v) for v in per.values())
    ):
        raise ConfigError(
            f"{name}: 'strong' must be an object with a number 'default' and a 'per_label' "
            "object of numbers"
        )
    unknown = set(per) - set(labels)
    if unknown:
        raise ConfigError(f"{name}: strong labels not in the task: {', '.join(sorted(unknown))}")
    if default is not None:
        _in_range(name, "strong.default", default)
    for label, x in per.items():
        _in_range(name, f"strong.per_label[{label!r}]", x)
    return (
        None if default is None else float(default),
        {str(k): float(v) for k, v in per.items()},
    )


# The calibration ledger: one line per certifying attempt, so that no window is used twice.
#
# Re-running calibrate on a growing log until it passes is optional stopping. The rule that
# prevents it here: each attempt certifies on a window that no earlier attempt (for the same
# models) has seen, and attempt k spends delta_k = delta * 6 / (pi^2 k^2) of the error budget,
# so that over every attempt ever recorded the chance of certifying a threshold that misses its
# target is at most delta (sum over k of 6 / (pi^2 k^2) = 1).


SPENDING = "delta * 6 / (pi^2 * attempt^2)"


def spent(delta: float, attempt: int) -> float:
    """The share of ``delta`` that attempt number ``attempt`` (1, 2, ...) may spend."""
    return delta * 6.0 / (math.pi**2 * attempt**2)


def ledger_attempts(
    path: Path, cheap_model: str, strong_model: str, objective: str = "quality"
) -> list[dict[str, Any]]:
    """Earlier attempts for this model pair and objective, oldest first.

    Each certifying objective makes its own promise with its own error budget, so each has
    its own sequence of attempts; entries without an ``objective`` are quality attempts."""
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not a ledger line ({exc})") from exc
        if (
            isinstance(entry, dict)
            and entry.get("models") == {"cheap": cheap_model, "strong": strong_model}
            and entry.get("objective", "quality") == objective
        ):
            out.append(entry)
    return out


def overlapping(
    attempts: list[dict[str, Any]], first_ms: int, last_ms: int
) -> dict[str, Any] | None:
    """The first earlier attempt whose window shares a moment with [first_ms, last_ms]."""
    for entry in attempts:
        window = entry.get("window") or {}
        lo, hi = window.get("first_ts_ms"), window.get("last_ts_ms")
        if isinstance(lo, int) and isinstance(hi, int) and lo <= last_ms and first_ms <= hi:
            return entry
    return None


def append_attempt(path: Path, entry: dict[str, Any]) -> None:
    with path.open("ab") as f:
        f.write(orjson.dumps(entry) + b"\n")
