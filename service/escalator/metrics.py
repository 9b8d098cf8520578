"""Prometheus metrics. One Metrics object per process (or per test), on its own registry.

Every series is documented in docs/OPERATIONS.md; tests check the exposition holds them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from escalator.messages import Attempt

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
TOKEN_TYPES = ("input", "output", "cache_write", "cache_read")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "escalator_requests", "Records consumed, by tier.", ["tier"], registry=r
        )
        self.decisions = Counter(
            "escalator_decisions",
            "Final outcomes per record: accepted, escalated, dead_lettered.",
            ["tier", "label", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "escalator_dead_letters",
            "Records sent to the dead-letter topic.",
            ["tier", "reason"],
            registry=r,
        )
        self.confidence = Histogram(
            "escalator_confidence",
            "Stated confidence of valid answers.",
            ["tier", "model"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.model_latency = Histogram(
            "escalator_model_latency_seconds",
            "Latency of answered model calls.",
            ["tier", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.processing = Histogram(
            "escalator_processing_seconds",
            "From dispatch to output acknowledged by the broker, per record.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "escalator_tokens", "Tokens billed, by type.", ["tier", "model", "type"], registry=r
        )
        self.cost = Counter(
            "escalator_cost_usd",
            "Spend in USD, from observed tokens.",
            ["tier", "model"],
            registry=r,
        )
        self.invalid_answers = Counter(
            "escalator_invalid_answers",
            "Answers that failed validation.",
            ["tier", "model"],
            registry=r,
        )
        self.retries = Counter(
            "escalator_retries",
            "Model-call retries, by error type.",
            ["tier", "error"],
            registry=r,
        )
        self.in_flight = Gauge(
            "escalator_in_flight", "Records being processed now.", ["tier"], registry=r
        )
        self.in_flight_limit = Gauge(
            "escalator_in_flight_limit", "Current in-flight limit.", ["tier"], registry=r
        )
        self.paused_partitions = Gauge(
            "escalator_paused_partitions",
            "Partitions paused by back-pressure or the breaker.",
            ["tier"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "escalator_circuit_open",
            "1 while the model circuit breaker is open.",
            ["tier"],
            registry=r,
        )
        self.commit_lag = Gauge(
            "escalator_commit_lag",
            "High watermark minus committed offset, per partition.",
            ["tier", "topic", "partition"],
            registry=r,
        )
        self.commits = Counter(
            "escalator_commits", "Offset commits, by result.", ["tier", "result"], registry=r
        )
        self.rebalances = Counter(
            "escalator_rebalances",
            "Partition assignments and revocations.",
            ["tier", "event"],
            registry=r,
        )
        self.abandoned = Counter(
            "escalator_abandoned_in_flight",
            "Records left in flight at revoke or shutdown; they will be redone (duplicate bound).",
            ["tier"],
            registry=r,
        )
        self.produce_errors = Counter(
            "escalator_produce_errors", "Failed produce attempts (retried).", ["tier"], registry=r
        )
        self.ready = Gauge("escalator_ready", "1 when the tier is ready.", ["tier"], registry=r)

    def observe_attempt(self, attempt: Attempt) -> None:
        t, m = attempt.tier, attempt.model
        self.model_latency.labels(t, m).observe(attempt.latency_ms / 1000)
        for kind, n in zip(
            TOKEN_TYPES,
            (
                attempt.input_tokens,
                attempt.output_tokens,
                attempt.cache_write_tokens,
                attempt.cache_read_tokens,
            ),
            strict=True,
        ):
            if n:
                self.tokens.labels(t, m, kind).inc(n)
        self.cost.labels(t, m).inc(attempt.cost_usd)
        if attempt.valid:
            self.confidence.labels(t, m).observe(attempt.confidence)
        else:
            self.invalid_answers.labels(t, m).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
