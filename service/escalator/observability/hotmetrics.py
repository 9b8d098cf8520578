"""Counters and histograms for the per-record path, exported through prometheus-client.

prometheus-client's own Counter and Histogram take a lock and walk the buckets in Python on
every update: about 4 µs per record here, a tenth of the pipeline's throughput (B1 in
BENCHMARKS.md). These keep plain numbers that are updated on the event-loop thread only, and a
collector turns them into ordinary metric families at scrape time (scrapes run on the same
loop, so no update is ever half-seen). Names, labels and exposition are prometheus-client's.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family(Collector):
    def __init__(self, name: str, doc: str, labelnames: Sequence[str], registry: CollectorRegistry):
        self.name = name
        self.doc = doc
        self.labelnames = list(labelnames)
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class HotCounter(_Family):
    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str], *, registry: CollectorRegistry
    ):
        self._children: dict[tuple[str, ...], CounterChild] = {}
        super().__init__(name, doc, labelnames, registry)

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = CounterChild()
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        yield family


class HotHistogram(_Family):
    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ):
        self._bounds = sorted(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        super().__init__(name, doc, labelnames, registry)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HistogramChild(self._bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*self._bounds, float("inf")], child.counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), float(cumulative)))
            family.add_metric(list(values), buckets, child.sum)
        yield family


def _le(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))
