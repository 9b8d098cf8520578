"""The process's Prometheus series (``observability/metrics.py``): the month's spend and its
turn, what one model call adds, the admission rate read at scrape time, and the catalogue the
dashboards and alert rules are checked against."""

from __future__ import annotations

import calendar
import math

from escalator.contract.messages import Attempt
from escalator.observability.metrics import Metrics


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, 0, 0, 0, 0)))


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name} {labels}"
    return found


def months(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["month"]: s.value
        for m in metrics.registry.collect()
        if m.name == "escalator_spend_month_usd"
        for s in m.samples
        if s.name.endswith("_total")
    }


def test_the_spend_is_counted_per_utc_month_and_the_last_month_is_dropped_at_the_turn() -> None:
    metrics = Metrics()
    assert list(months(metrics).values()) == [0.0], "this month's series exists from the start"
    metrics.spend_this_month(1.5, now=utc(2099, 11, 30, 23, 59))
    metrics.spend_this_month(0.5, now=utc(2099, 11, 30, 23, 59))
    assert months(metrics) == {"2099-11": 2.0}, "the month before is dropped at the turn"
    metrics.spend_this_month(0.25, now=utc(2099, 12, 1))
    assert months(metrics) == {"2099-12": 0.25}
    metrics.spend_this_month(1.0, now=utc(2100, 1, 1))  # the turn of the year
    assert months(metrics) == {"2100-01": 1.0}
    metrics.spend_this_month(0.0, now=utc(2100, 2, 1))
    assert months(metrics) == {"2100-02": 0.0}, "a month begins at 0 even with nothing spent"


def test_an_attempt_adds_its_tokens_cost_and_latency_and_only_a_valid_answer_its_confidence() -> (
    None
):
    metrics = Metrics()
    answered = Attempt(
        "cheap",
        "m",
        "safe",
        0.93,
        True,
        input_tokens=100,
        output_tokens=7,
        cache_read_tokens=50,
        cost_usd=0.002,
        latency_ms=250,
    )
    metrics.observe_attempt(answered)
    metrics.observe_attempt(answered, shadow=True)
    cheap = {"tier": "cheap", "model": "m"}
    assert value(metrics, "escalator_tokens_total", **cheap, type="input", shadow="false") == 100
    assert value(metrics, "escalator_tokens_total", **cheap, type="cache_read", shadow="true") == 50
    assert value(metrics, "escalator_cost_usd_total", **cheap, shadow="false") == 0.002
    assert value(metrics, "escalator_model_latency_seconds_sum", **cheap) == 0.5
    assert value(metrics, "escalator_confidence_count", **cheap) == 2
    assert math.isclose(sum(months(metrics).values()), 0.004), "shadow calls are spend too"

    metrics.observe_attempt(Attempt("cheap", "m", None, 0.0, False))
    assert value(metrics, "escalator_invalid_answers_total", **cheap) == 1
    refusal = Attempt("cheap", "m", "unsafe", 1.0, True, stop_reason="refusal")
    metrics.observe_attempt(refusal)
    metrics.observe_attempt(Attempt("cheap", "m", None, 0.0, False, stop_reason="refusal"))
    assert value(metrics, "escalator_refusals_total", **cheap, category="uncategorized") == 2
    assert value(metrics, "escalator_invalid_answers_total", **cheap) == 1, "not invalid"
    assert value(metrics, "escalator_confidence_count", **cheap) == 2, "a policy's confidence"


def test_the_admission_rate_is_read_when_scraped_and_is_nan_while_the_controller_is_off() -> None:
    metrics = Metrics()
    rates: dict[str, float] | None = {"requests": 40.0}
    metrics.watch_admission("m", lambda: rates)
    assert value(metrics, "escalator_admission_rate", model="m", kind="requests") == 40.0
    assert math.isnan(value(metrics, "escalator_admission_rate", model="m", kind="input_tokens"))
    rates = None
    assert math.isnan(value(metrics, "escalator_admission_rate", model="m", kind="requests"))
    rates = {"requests": 12.0}
    assert value(metrics, "escalator_admission_rate", model="m", kind="requests") == 12.0


def test_the_catalogue_names_every_exposed_series_with_its_labels() -> None:
    metrics = Metrics()
    catalogue = metrics.catalogue()
    assert catalogue["escalator_confidence_bucket"] == ("tier", "model", "le")
    assert catalogue["escalator_confidence_count"] == ("tier", "model")
    assert catalogue["escalator_refusals_total"] == ("tier", "model", "category")
    assert catalogue["escalator_spend_cap_usd"] == ()
    assert "escalator_refusals" not in catalogue, "a counter is exposed with _total"
    metrics.observe_attempt(Attempt("cheap", "m", "safe", 0.9, True, input_tokens=3))
    metrics.observe_attempt(Attempt("cheap", "m", None, 0.0, False, stop_reason="refusal"))
    metrics.tier("cheap").requests.inc()
    metrics.decision("cheap", "safe", "accepted")
    metrics.watch_admission("m", lambda: None)
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in metrics.exposition().decode().splitlines()
        if line and not line.startswith("#")
    }  # prometheus_client's *_created samples are its own, not the service's
    assert exposed, "something was exposed"
    missing = {n for n in exposed if not n.endswith("_created")} - set(catalogue)
    assert missing == set(), missing
