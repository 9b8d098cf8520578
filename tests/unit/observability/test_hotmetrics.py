"""The hot-path counters and histograms expose exactly what prometheus-client's would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from escalator.observability.hotmetrics import HotCounter, HotHistogram

BUCKETS = (0.1, 0.5, 1.0, 2.5)


@pytest.mark.parametrize(
    "values", [[], [0.1], [0.0, 0.1, 0.10001, 0.5, 0.7, 1.0, 2.5, 2.6, 100.0], [3.0] * 5]
)
def test_histogram_exposition_matches_prometheus_client(values: list[float]) -> None:
    """Same observations, same text: bucket edges are inclusive (le), +Inf catches the rest."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("x_seconds", "doc", ["tier"], buckets=BUCKETS, registry=ours)
    ref = Histogram("x_seconds", "doc", ["tier"], buckets=BUCKETS, registry=theirs)
    hot.labels("cheap")
    ref.labels("cheap")
    for v in values:
        hot.labels("cheap").observe(v)
        ref.labels("cheap").observe(v)
    assert _samples(ours) == _samples(theirs)


def test_counter_exposition_matches_prometheus_client() -> None:
    """A counter with labels exposes name_total with the same values."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotCounter("y", "doc", ["tier", "type"], registry=ours)
    ref = Counter("y", "doc", ["tier", "type"], registry=theirs)
    for labels, n in (
        (("cheap", "input"), 3),
        (("strong", "output"), 2.5),
        (("cheap", "input"), 1),
    ):
        hot.labels(*labels).inc(n)
        ref.labels(*labels).inc(n)
    assert _samples(ours) == _samples(theirs)


def _samples(registry: CollectorRegistry) -> list[str]:
    """Exposition lines without comments and the _created series prometheus-client adds."""
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line for line in lines if not line.startswith("#") and "_created" not in line)
