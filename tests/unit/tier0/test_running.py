"""tier0/running.py: tier 0 as the cheap row's ``beside``, built from settings."""

from __future__ import annotations

from types import SimpleNamespace

from escalator.config import load_settings
from escalator.model.task import load_task
from escalator.observability.metrics import Metrics
from escalator.tier0.running import beside
from escalator.tier0.state import Remembered
from escalator.tier0.watch import Watched
from escalator.tiers.routing import Thresholds
from escalator.tiers.table import HandlerParts, Process
from tests.unit.tier0.test_watch import Fixed


def test_tier0_runs_under_watch_at_the_settings_rate_beside_the_cheap_tier() -> None:
    """ESCALATOR_TIER0_SAMPLE_RATE and ESCALATOR_MONITOR_ALPHA reach its live test; its
    withdrawals are remembered on ESCALATOR_TIER0_STATE_TOPIC; the handlers get the strong
    model's caller for the live test's reference."""
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
            "ESCALATOR_TIER0_SAMPLE_RATE": "0.2",
            "ESCALATOR_MONITOR_ALPHA": "0.02",
            "ESCALATOR_TIER0_STATE_TOPIC": "t0-state",
        }
    )
    metrics = Metrics()
    parts = HandlerParts.of(
        settings, task=load_task(None), thresholds=Thresholds(0.7), metrics=metrics
    )
    strong = object()
    models = {"strong": SimpleNamespace(caller=strong)}
    process = Process(settings, models, producer=object())  # type: ignore[arg-type]
    built, besides = beside(Fixed())(process, parts)  # type: ignore[arg-type]
    w = built.tier0
    assert isinstance(w, Watched) and w.active and w.sample_rate == 0.2
    assert w.live is not None and w.live.monitor.detector.alpha == 0.02
    assert 'escalator_tier0_active{version="t0-abcdef0123"} 1.0' in metrics.exposition().decode()
    assert built.strong is strong and parts.tier0 is None and parts.strong is None
    (remembered,) = besides
    assert isinstance(remembered, Remembered) and remembered.tier0 is w
    assert remembered.withdrawals.topic == "t0-state"  # type: ignore[attr-defined]
