"""Counters and histograms for the per-record path, exported through prometheus-client.

prometheus-client's own Counter and Histogram take a lock and walk the buckets in Python on
every update: about 4 µs per record here, a tenth of the pipeline's throughput (B1 in
BENCHMARKS.md). These keep plain numbers that are updated on the event-loop thread only, and a
collector turns them into ordinary metric families at scrape time (scrapes run on the same
loop, so no update is ever half-seen). Names, labels and exposition are prometheus-client's.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Exemplar, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Gives the trace id of the work being observed, or None (``observability/tracing.py``).
TraceIdSource = Callable[[], str | None]


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

    def exemplar(self, index: int) -> Exemplar | None:
        return None


class ExemplarHistogramChild(HistogramChild):
    """A child that keeps, per bucket, the trace id of its latest observation made inside a
    trace: an OpenMetrics exemplar, so a dashboard panel links to a trace (only with tracing
    on; the plain child pays nothing for it)."""

    __slots__ = ("_exemplars", "_source")

    def __init__(self, bounds: list[float], source: TraceIdSource) -> None:
        super().__init__(bounds)
        self._source = source
        self._exemplars: list[Exemplar | None] = [None] * (len(bounds) + 1)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.sum += value
        trace_id = self._source()
        if trace_id is not None:
            self._exemplars[index] = Exemplar({"trace_id": trace_id}, value, time.time())

    def exemplar(self, index: int) -> Exemplar | None:
        return self._exemplars[index]


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
        self._trace_ids: TraceIdSource | None = None
        super().__init__(name, doc, labelnames, registry)

    def with_exemplars(self, source: TraceIdSource) -> None:
        """Children made from now on keep exemplars (trace ids from ``source``)."""
        self._trace_ids = source

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            source = self._trace_ids
            child = self._children[values] = (
                HistogramChild(self._bounds)
                if source is None
                else ExemplarHistogramChild(self._bounds, source)
            )
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            cumulative = 0
            buckets: list[Any] = []
            for i, (bound, count) in enumerate(
                zip([*self._bounds, float("inf")], child.counts, strict=True)
            ):
                cumulative += count
                exemplar = child.exemplar(i)
                if exemplar is None:
                    buckets.append((_le(bound), float(cumulative)))
                else:
                    buckets.append((_le(bound), float(cumulative), exemplar))
            family.add_metric(list(values), buckets, child.sum)
        yield family


def _le(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))
