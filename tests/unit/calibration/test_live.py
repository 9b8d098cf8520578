"""The live monitors in the service: what a thresholds file promises (load_promise), which tier
tests it, the metrics they expose, and the review console feeding adjudication decisions to
the test of a human file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from escalator.calibration import live
from escalator.calibration.curves import baselines
from escalator.calibration.search import calibrate
from escalator.calibration.threshold_file import (
    Promise,
    load_promise,
    threshold_body,
    write_threshold_file,
)
from escalator.config import load_settings
from escalator.observability.metrics import Metrics
from escalator.review.service import WatchedQueues, watched
from tests.unit.calibration.worlds import log, realistic
from tests.unit.review.fakes import FakeReviewQueues, make_item


def quality_file(tmp_path: Path) -> Path:
    d = log(realistic(), np.random.default_rng(4), 4000, p=1.0)
    cal = calibrate(d, target=0.95, delta=0.05)
    base = baselines(d, float(cal.curve.escalation[cal.chosen]))
    body = threshold_body(
        cal,
        d,
        source="test",
        delta=0.05,
        window={"first_ts_ms": 0, "last_ts_ms": 1},
        price_table_version="p1",
        base=base,
    )
    path = tmp_path / "t.json"
    write_threshold_file(path, body)
    return path


def test_a_quality_file_stores_the_window_confidence_histogram_and_its_promise(
    tmp_path: Path,
) -> None:
    """The file keeps 100 bins of the window's cheap confidences (and its invalid ones); the
    promise reads back its objective, target and status."""
    path = quality_file(tmp_path)
    doc = orjson.loads(path.read_bytes())
    hist = doc["confidence_histogram"]
    assert len(hist["counts"]) == 100 and sum(hist["counts"]) + hist["invalid"] == 4000
    promise = load_promise(path)
    assert promise.objective == "quality" and promise.target == 0.95 and promise.certified
    assert promise.histogram == tuple(hist["counts"]) and promise.version == doc["version"]


def test_a_file_written_before_the_histogram_still_loads_without_a_drift_test(
    tmp_path: Path,
) -> None:
    """Old files have no histogram: the promise loads, and no confidence test runs."""
    path = quality_file(tmp_path)
    doc = orjson.loads(path.read_bytes())
    del doc["confidence_histogram"]
    path.write_bytes(orjson.dumps(doc))
    promise = load_promise(path)
    assert promise.histogram is None
    assert live.confidence_watch(promise, alpha=0.01, metrics=Metrics()) is None


def _promise(**kw: Any) -> Promise:
    base: dict[str, Any] = {
        "version": "cal-1",
        "objective": "quality",
        "target": 0.98,
        "certified": True,
        "cheap_threshold": 0.74,
        "strong_threshold": None,
        "review_labels": (),
        "histogram": None,
        "invalid": 0,
    }
    return Promise(**{**base, **kw})


def test_the_agreement_test_rejects_and_says_so_in_its_metrics() -> None:
    """Units that differ far more often than the promise allows: the e-value climbs past
    1/alpha and escalator_monitor_rejected{monitor="agreement"} turns 1."""
    metrics = Metrics()
    watch = live.agreement_watch(_promise(), alpha=0.01, shadow_rate=0.5, metrics=metrics)
    assert watch is not None
    text = metrics.exposition().decode()
    assert 'escalator_monitor_rejected{monitor="agreement",version="cal-1"} 0.0' in text
    for k in range(2000):
        watch.observe(1.0 if k % 3 == 0 else 0.0, 0.5)
    text = metrics.exposition().decode()
    assert 'escalator_monitor_rejected{monitor="agreement",version="cal-1"} 1.0' in text
    assert (
        'escalator_monitor_observations_total{monitor="agreement",result="tested"} 2000.0' in text
    )


@pytest.mark.parametrize(
    "promise",
    [None, _promise(certified=False), _promise(objective="human", strong_threshold=0.8)],
)
def test_no_agreement_test_without_a_certified_quality_promise(promise: Promise | None) -> None:
    """No file, a refused or fallback file, or a human file: the strong tier tests nothing."""
    assert live.agreement_watch(promise, alpha=0.01, shadow_rate=0.1, metrics=Metrics()) is None


def test_no_agreement_test_without_shadow_sampling() -> None:
    """At ESCALATOR_SHADOW_RATE=0 accepted answers are never compared: no test."""
    assert live.agreement_watch(_promise(), alpha=0.01, shadow_rate=0.0, metrics=Metrics()) is None


def test_the_people_test_routes_as_the_file_says() -> None:
    """At t_c 0.8, t_s 0.6: a confident cheap answer is routed; else a confident strong one;
    else a person decides (right by definition); "neither" makes a model answer wrong."""
    promise = _promise(objective="human", cheap_threshold=0.8, strong_threshold=0.6)
    watch = live.people_watch(
        promise, alpha=0.01, shadow_rate=1.0, adjudicate=(0.2, 0.5), metrics=Metrics()
    )
    assert watch is not None
    cheap_routed = make_item("a", "t", queue="adjudication", cheap=("safe", 0.9))
    assert not watch.routed_wrong(cheap_routed, "safe")
    assert watch.routed_wrong(cheap_routed, "unsafe") and watch.routed_wrong(cheap_routed, None)
    strong_routed = make_item(
        "b", "t", queue="adjudication", cheap=("safe", 0.5), strong=("unsafe", 0.7)
    )
    assert not watch.routed_wrong(strong_routed, "unsafe")
    to_people = make_item(
        "c", "t", queue="adjudication", cheap=("safe", 0.5), strong=("unsafe", 0.3)
    )
    assert not watch.routed_wrong(to_people, "safe") and not watch.routed_wrong(to_people, None)


async def test_the_console_feeds_each_adjudication_decision_to_the_people_test(
    tmp_path: Path,
) -> None:
    """With a certified human file in force, every adjudication decided through the console
    is a unit of the people test; review-queue decisions are not (chosen by rule)."""
    promise = tmp_path / "t.json"
    write_threshold_file(
        promise,
        {
            "objective": {"name": "human", "target": 0.9},
            "procedure": {"review_labels": []},
            "status": "certified",
            "threshold": 0.8,
            "label_thresholds": {},
            "strong": {"default": 0.6, "per_label": {}},
            "models": {"cheap": "claude-haiku-5-5", "strong": "claude-sonnet-5-5"},
        },
    )
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "x:9092",
            "ESCALATOR_THRESHOLDS_FILE": str(promise),
            "ESCALATOR_ADJUDICATE_AGREE": "0.2",
            "ESCALATOR_ADJUDICATE_DISAGREE": "0.5",
        }
    )
    fake, metrics = FakeReviewQueues(), Metrics()
    queues = watched(settings, fake, metrics)
    assert isinstance(queues, WatchedQueues)
    fake.put(make_item("r1", "t", queue="adjudication", cheap=("safe", 0.9)))
    fake.put(make_item("r2", "t", queue="review"))
    for queue in ("adjudication", "review"):
        lease = queues.lease(queue, "alice")  # type: ignore[arg-type]
        assert lease is not None
        assert await queues.decide(lease.id, "alice", "unsafe", None) == "done"
    text = metrics.exposition().decode()
    assert 'escalator_monitor_observations_total{monitor="people",result="tested"} 1.0' in text
    plain = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "x:9092"})
    assert watched(plain, fake, metrics) is fake
