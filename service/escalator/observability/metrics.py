"""Prometheus metrics. One Metrics object per process (or per test), on its own registry.

Every series is listed in the README (Operations); tests check the exposition holds them.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from escalator.contract.messages import Attempt
from escalator.observability.hotmetrics import HotCounter, HotHistogram, TraceIdSource

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
TOKEN_TYPES = ("input", "output", "cache_write", "cache_read")
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ESTIMATE_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 4)
#: A batch's time from submission to its end: seconds (the emulator in tests) to 24 hours.
LANE_BATCH_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        #: Whether the latency histograms keep exemplars (:meth:`link_traces`).
        self.exemplars = False
        self.requests = HotCounter(
            "escalator_requests", "Records consumed, by tier.", ["tier"], registry=r
        )
        self.decisions = HotCounter(
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
        self.confidence = HotHistogram(
            "escalator_confidence",
            "Stated confidence of valid answers.",
            ["tier", "model"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.model_latency = HotHistogram(
            "escalator_model_latency_seconds",
            "Latency of answered model calls.",
            ["tier", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.processing = HotHistogram(
            "escalator_processing_seconds",
            "From dispatch to output acknowledged by the broker, per record.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = HotCounter(
            "escalator_tokens",
            "Tokens billed, by type; shadow=true for measurement calls.",
            ["tier", "model", "type", "shadow"],
            registry=r,
        )
        self.cost = HotCounter(
            "escalator_cost_usd",
            "Spend in USD, from observed tokens; shadow=true for measurement calls.",
            ["tier", "model", "shadow"],
            registry=r,
        )
        self.spend_month = Counter(
            "escalator_spend_month_usd",
            "Spend in USD in the calendar month (UTC) named by the label, shadow calls "
            "included: month-to-date is its increase over the month (dashboard, "
            "EscalatorSpendNearMonthlyCap); the past month's series is dropped at the turn.",
            ["month"],
            registry=r,
        )
        self.spend_cap = Gauge(
            "escalator_spend_cap_usd",
            "The monthly spend cap the operator stated (ESCALATOR_MONTHLY_SPEND_CAP_USD); "
            "0: not stated.",
            registry=r,
        )
        self._month: tuple[float, str, Any] | None = None
        self.spend_this_month(0.0)  # the month's series exists from the start, at 0
        self.invalid_answers = HotCounter(
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
        self.lane_fallbacks = Counter(
            "escalator_lane_fallbacks",
            "Batch-lane requests answered in real time instead, by their batch result "
            "(errored, expired, canceled) or deadline (the batch's result would come too late).",
            ["result"],
            registry=r,
        )
        self.lane_measurements = Counter(
            "escalator_lane_measurements",
            "Shadows measured through the batch lane, by their batch result: succeeded (the "
            "shadow decision written at the batch price), invalid (asked again in real time), "
            "errored, expired, canceled (answered in real time instead).",
            ["result"],
            registry=r,
        )
        self.lane_escalations = Counter(
            "escalator_lane_escalations",
            "Unsure cheap answers from the batch lane, by the lane their strong answer takes: "
            "batch (handed off again for a strong-model batch, the slack allowing) or realtime "
            "(the escalations topic, as before).",
            ["lane"],
            registry=r,
        )
        self.lane_waiting = Gauge(
            "escalator_lane_waiting",
            "Batch-lane requests waiting for their batch's result (in no batch yet, or in one "
            "running).",
            registry=r,
        )
        self.lane_batches = Gauge(
            "escalator_lane_batches_in_flight",
            "Batches submitted to the Message Batches API and not ended.",
            registry=r,
        )
        self.lane_oldest_age = Gauge(
            "escalator_lane_oldest_batch_age_seconds",
            "Age of the oldest batch in flight since its submission (0: none).",
            registry=r,
        )
        self.lane_expected = Gauge(
            "escalator_lane_expected_completion_seconds",
            "The lane's completion time as its rule assumes it (observed, else "
            "ESCALATOR_BATCH_EXPECTED_S).",
            registry=r,
        )
        self.lane_queued = Gauge(
            "escalator_lane_queued_requests",
            "Batch requests in the Message Batches API's processing queue as the lane counts "
            "them: members of its batches not ended (its own and those it read on the state "
            "topic), held under ESCALATOR_LANE_QUEUE_LIMIT.",
            registry=r,
        )
        self.lane_queue_limit = Gauge(
            "escalator_lane_queue_limit",
            "ESCALATOR_LANE_QUEUE_LIMIT: the batch requests the lane lets into the processing "
            "queue.",
            registry=r,
        )
        self.lane_queue_holds = Counter(
            "escalator_lane_queue_holds",
            "Batches held back because the processing queue would pass "
            "ESCALATOR_LANE_QUEUE_LIMIT (each counted once; it is submitted once a batch ends).",
            registry=r,
        )
        self.lane_rate_limited = Counter(
            "escalator_lane_rate_limited",
            "429s from the Message Batches API: each holds every batch call for its "
            "retry-after, and fails no request.",
            registry=r,
        )
        self.lane_batch_seconds = Histogram(
            "escalator_lane_batch_seconds",
            "Time from a batch's submission to its end, per batch, observed when its results "
            "are read (the lane's time to results).",
            buckets=LANE_BATCH_BUCKETS,
            registry=r,
        )
        self.lane_deadline_misses = Counter(
            "escalator_lane_deadline_misses",
            "Batch-lane requests answered after their deadline (the hand-off's absolute "
            "deadline): by their batch, or by a real-time fallback that came too late.",
            registry=r,
        )
        self.shadow_failures = Counter(
            "escalator_shadow_failures",
            "Shadow (measurement) calls abandoned; the request already had its result.",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "escalator_in_flight", "Records being processed now.", ["tier"], registry=r
        )
        self.awaiting_ack = Gauge(
            "escalator_awaiting_ack",
            "Records answered and produced, waiting for the broker's acknowledgement.",
            ["tier"],
            registry=r,
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
            "Records let go uncommitted (revoke, fencing, shutdown); the next owner redoes them.",
            ["tier"],
            registry=r,
        )
        self.uncommitted = Gauge(
            "escalator_uncommitted",
            "Records dispatched but not yet committed: what a crash now would make the next "
            "owner redo (bounded by ESCALATOR_MAX_UNCOMMITTED plus one commit batch).",
            ["tier"],
            registry=r,
        )
        self.transactions = Counter(
            "escalator_transactions",
            "Exactly-once transactions, by result (committed, aborted, fenced; producer_failed: a "
            "fresh producer after an abort did not start).",
            ["tier", "result"],
            registry=r,
        )
        self.discarded_answers = Counter(
            "escalator_discarded_answers",
            "Exactly-once: model answers thrown away because their transaction did not commit; "
            "the model is called again for them.",
            ["tier", "reason"],
            registry=r,
        )
        self.producer_recreated = Counter(
            "escalator_producer_recreated",
            "Output producer replaced after an unrecoverable error (OutOfOrderSequenceNumber...).",
            ["reason"],
            registry=r,
        )
        self.produce_errors = Counter(
            "escalator_produce_errors", "Failed produce attempts (retried).", ["tier"], registry=r
        )
        self.calibrated_escalation = Gauge(
            "escalator_calibrated_escalation_rate",
            "Escalation rate that calibration predicted for the thresholds in force "
            "(bound: low, expected, high of the 95% interval). Absent without a thresholds file.",
            ["bound", "version"],
            registry=r,
        )
        self.refusals = Counter(
            "escalator_refusals",
            "Answers that ended with stop_reason refusal, by stop_details.category "
            "(uncategorized when the API names none). Never retried.",
            ["tier", "model", "category"],
            registry=r,
        )
        self.api_blocked = Gauge(
            "escalator_api_blocked",
            "1 while the tier holds traffic because the account cannot call its model "
            "(spend_limit, billing, credentials, permission, model_not_found, "
            "organization_on_hold) or every call is rejected (request_rejected).",
            ["tier", "reason"],
            registry=r,
        )
        self.ratelimit_limit = Gauge(
            "escalator_ratelimit_limit",
            "The organisation's rate limit per model from the last anthropic-ratelimit-*-limit "
            "headers (kind: requests, input_tokens, output_tokens, tokens; per minute).",
            ["model", "kind"],
            registry=r,
        )
        self.ratelimit_remaining = Gauge(
            "escalator_ratelimit_remaining",
            "What is left of it, from the last anthropic-ratelimit-*-remaining headers "
            "(token counts are rounded to the thousand by the API).",
            ["model", "kind"],
            registry=r,
        )
        self.warmups = Counter(
            "escalator_cache_warmups",
            "Calls sent alone to write the prompt cache before fanning out (start-up, idle).",
            ["tier", "model"],
            registry=r,
        )
        self.admission_wait = HotHistogram(  # observed on each call the gate paces (headers seen)
            "escalator_admission_wait_seconds",
            "Time a model call waited at the admission gate for the rate limit to cover it.",
            ["tier", "model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.admission_waiting = Gauge(
            "escalator_admission_waiting",
            "Model calls held by the admission controller now.",
            ["tier", "model"],
            registry=r,
        )
        self.admission_held = Counter(
            "escalator_admission_held",
            "Model calls the admission controller held (made to wait) before admitting them.",
            ["tier", "model"],
            registry=r,
        )
        self.admission_estimated = HotCounter(
            "escalator_admission_estimated_tokens",
            "Tokens the admission controller estimated for answered calls (kind: input, "
            "output); compare with escalator_admission_actual_tokens_total.",
            ["tier", "model", "kind"],
            registry=r,
        )
        self.admission_actual = HotCounter(
            "escalator_admission_actual_tokens",
            "Tokens the API counted against the rate limit for the same calls (input: uncached "
            "input and cache writes; output: output tokens).",
            ["tier", "model", "kind"],
            registry=r,
        )
        self.admission_error = HotHistogram(
            "escalator_admission_estimate_ratio",
            "Per answered call: actual / estimated input tokens.",
            ["tier", "model"],
            buckets=ESTIMATE_BUCKETS,
            registry=r,
        )
        self.admission_rate = Gauge(
            "escalator_admission_rate",
            "The rate this process's admission controller admits at, per minute (kind: "
            "requests, input_tokens, output_tokens); NaN while it lets calls through.",
            ["model", "kind"],
            registry=r,
        )
        self.ratelimit_used = HotCounter(
            "escalator_ratelimit_used",
            "Usage counted against the organisation's rate limits, as the API counts it "
            "(kind: requests, input_tokens = uncached input + cache writes, output_tokens).",
            ["tier", "model", "kind"],
            registry=r,
        )
        self.rate_limited = Counter(
            "escalator_rate_limited",
            "429 rate-limit answers (every attempt, retried or not).",
            ["tier", "model"],
            registry=r,
        )
        self.shadows_shed = Counter(
            "escalator_shadows_shed",
            "Shadow (measurement) calls not made because the strong model's budget was tight; "
            "the kept ones record the rate actually applied.",
            ["model"],
            registry=r,
        )
        self.ready = Gauge("escalator_ready", "1 when the tier is ready.", ["tier"], registry=r)
        # The human tier. The strong tier counts what it hands on; the console (escalator
        # review serve) exports its queues, its reviewers' decisions and the age bound that
        # EscalatorReviewTooOld compares with.
        self.review_handoffs = Counter(
            "escalator_review_handoffs",
            "Requests the strong tier handed on to people, by reason.",
            ["reason"],
            registry=r,
        )
        self.adjudications_sampled = Counter(
            "escalator_adjudications_sampled",
            "Requests with both answers sampled for adjudication (sampled_agree/_disagree).",
            ["reason"],
            registry=r,
        )
        # The monitors of a thresholds file's promise (calibration/monitor.py): monitor is
        # agreement (strong tier), people (review console) or confidence (cheap tier).
        self.monitor_evalue = Gauge(
            "escalator_monitor_evalue",
            "E-value of the sequential test of the thresholds file in force (1 at the start; "
            "at 1/alpha or more, the promise is rejected).",
            ["monitor", "version"],
            registry=r,
        )
        self.monitor_rejected = Gauge(
            "escalator_monitor_rejected",
            "1 once the sequential test has rejected the thresholds file's promise (or, for "
            "confidence, its confidence distribution); until the process restarts.",
            ["monitor", "version"],
            registry=r,
        )
        self.monitor_observations = Counter(
            "escalator_monitor_observations",
            "Units the monitor has tested (skipped: below its sampling floor).",
            ["monitor", "result"],
            registry=r,
        )
        # Tier 0's watch (tier0/watch.py): monitor "tier0" above tests its agreement.
        self.tier0_active = Gauge(
            "escalator_tier0_active",
            "1 while tier 0 (ESCALATOR_TIER0_FILE) answers; 0 once its monitor withdrew it "
            "(until the process restarts).",
            ["version"],
            registry=r,
        )
        self.tier0_withdrawals = Counter(
            "escalator_tier0_withdrawals",
            "Times tier 0 withdrew itself: its sampled agreement with the cheap model's routed "
            "answer fell below the certified target.",
            ["version"],
            registry=r,
        )
        self.tier0_samples = Counter(
            "escalator_tier0_samples",
            "Tier-0 answers also asked of the cheap model (ESCALATOR_TIER0_SAMPLE_RATE), by "
            "result: agree, differ, or failed (no answer had: not tested).",
            ["result"],
            registry=r,
        )
        self.review_depth = Gauge(
            "escalator_review_queue_depth",
            "Items waiting for a reviewer (leased ones included), per queue.",
            ["queue"],
            registry=r,
        )
        self.review_oldest_age = Gauge(
            "escalator_review_oldest_age_seconds",
            "Age of the oldest undecided item, per queue (0 when empty).",
            ["queue"],
            registry=r,
        )
        self.review_age_bound = Gauge(
            "escalator_review_age_bound_seconds",
            "ESCALATOR_REVIEW_MAX_AGE_S: the oldest item may wait this long before the alert.",
            registry=r,
        )
        self.review_leased = Gauge(
            "escalator_review_leased",
            "Items leased to a reviewer now, per queue.",
            ["queue"],
            registry=r,
        )
        self.review_decisions = Counter(
            "escalator_review_decisions",
            "Reviewer decisions, by queue, reviewer and outcome (done, duplicate, lost).",
            ["queue", "reviewer", "outcome"],
            registry=r,
        )
        self.review_seconds = Histogram(
            "escalator_review_decision_seconds",
            "Time from showing an item to its decision.",
            ["queue"],
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.review_duplicates = Counter(
            "escalator_review_duplicates",
            "Decisions ignored because the item was already decided (redelivery, duplicate "
            "item, a second reviewer).",
            ["queue"],
            registry=r,
        )
        self.review_leases_expired = Counter(
            "escalator_review_leases_expired",
            "Leases that ran out without a decision; the item went back to its queue.",
            ["queue"],
            registry=r,
        )
        self.review_logins = Counter(
            "escalator_review_logins",
            "Console sign-ins, by outcome (ok, failed, throttled).",
            ["outcome"],
            registry=r,
        )
        self.review_skips = Counter(
            "escalator_review_skips",
            "Items a reviewer gave back without deciding.",
            ["queue"],
            registry=r,
        )
        self.review_invalid_items = Counter(
            "escalator_review_invalid_items",
            "Records on a review topic that are not review items (dead-lettered).",
            ["queue"],
            registry=r,
        )
        # Holds that outlast retention (engine/parking.py; the review console too).
        self.retention_used = Gauge(
            "escalator_retention_used_ratio",
            "Share of its topic's retention the oldest uncommitted record has used (by time or "
            "by bytes), the largest over this process's partitions; the broker cannot delete "
            "it below 1.",
            ["tier", "topic"],
            registry=r,
        )
        self.held_oldest_age = Gauge(
            "escalator_held_oldest_age_seconds",
            "Age of the oldest uncommitted record, the largest over this process's partitions.",
            ["tier", "topic"],
            registry=r,
        )
        self.retention_ms = Gauge(
            "escalator_retention_ms",
            "The topic's effective retention.ms as the broker describes it (-1: unlimited).",
            ["topic"],
            registry=r,
        )
        self.retention_bytes = Gauge(
            "escalator_retention_bytes",
            "The topic's effective retention.bytes per partition (-1: unlimited).",
            ["topic"],
            registry=r,
        )
        self.park_at = Gauge(
            "escalator_park_at_ratio",
            "ESCALATOR_PARK_AT: held records are parked once retention_used_ratio reaches it.",
            registry=r,
        )
        self.parked = Counter(
            "escalator_parked",
            "Held records copied to the parked topic (acknowledged) before retention could "
            "delete them.",
            ["tier", "topic"],
            registry=r,
        )
        self.retention_lost = Counter(
            "escalator_retention_lost",
            "Records the broker deleted before the group committed past them (lost work).",
            ["tier", "topic"],
            registry=r,
        )
        self.held_since = Gauge(
            "escalator_held_since_seconds",
            "When the tier's current hold began (Unix time; 0 while not held).",
            ["tier"],
            registry=r,
        )
        self.hold_ends = Gauge(
            "escalator_hold_ends_seconds",
            "When the API says the current hold ends (a spend cap; Unix time; 0: not said).",
            ["tier"],
            registry=r,
        )

        self._models: dict[tuple[str, str, str], _ModelSeries] = {}
        self._limits: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._tiers: dict[str, TierSeries] = {}
        self._decisions: dict[tuple[str, str, str], Any] = {}

    def tier(self, tier: str) -> TierSeries:
        """The per-tier series, bound once: ``labels()`` is too slow for the per-record path."""
        bound = self._tiers.get(tier)
        if bound is None:
            bound = self._tiers[tier] = TierSeries(self, tier)
        return bound

    def decision(self, tier: str, label: str, outcome: str) -> None:
        key = (tier, label, outcome)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.decisions.labels(tier, label, outcome)
        child.inc()

    def spend_this_month(self, usd: float, now: float | None = None) -> None:
        """Add to this UTC month's spend; at the turn of the month, drop the last one's."""
        now = time.time() if now is None else now
        if self._month is None or now >= self._month[0]:
            day = time.gmtime(now)
            label = f"{day.tm_year:04d}-{day.tm_mon:02d}"
            if self._month is not None and self._month[1] != label:
                self.spend_month.remove(self._month[1])
            year, month = day.tm_year + (day.tm_mon == 12), day.tm_mon % 12 + 1
            until = calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
            self._month = (float(until), label, self.spend_month.labels(label))
        if usd:
            self._month[2].inc(usd)

    def observe_attempt(self, attempt: Attempt, shadow: bool = False) -> None:
        key = (attempt.tier, attempt.model, "true" if shadow else "false")
        series = self._models.get(key)
        if series is None:
            series = self._models[key] = _ModelSeries(self, *key)
        series.latency.observe(attempt.latency_ms / 1000)
        for child, n in (
            (series.input, attempt.input_tokens),
            (series.output, attempt.output_tokens),
            (series.cache_write, attempt.cache_write_tokens),
            (series.cache_read, attempt.cache_read_tokens),
        ):
            if n:
                child.inc(n)
        series.cost.inc(attempt.cost_usd)
        self.spend_this_month(attempt.cost_usd)
        if attempt.refused:
            # Also when the task's refusal_label made it a valid answer: its confidence is
            # a policy's, not the model's, and stays out of the histogram.
            self.refusals.labels(
                attempt.tier, attempt.model, attempt.refusal_category or "uncategorized"
            ).inc()
        elif attempt.valid:
            series.confidence.observe(attempt.confidence)
        else:
            series.invalid.inc()

    def observe_rate_limits(self, model: str, limits: dict[str, tuple[float, float]]) -> None:
        """``{kind: (limit, remaining)}`` from one response's headers."""
        for kind, (limit, remaining) in limits.items():
            key = (model, kind)
            pair = self._limits.get(key)
            if pair is None:
                pair = self._limits[key] = (
                    self.ratelimit_limit.labels(model, kind),
                    self.ratelimit_remaining.labels(model, kind),
                )
            pair[0].set(limit)
            pair[1].set(remaining)

    def admission(self, tier: str, model: str) -> AdmissionSeries:
        return AdmissionSeries(self, tier, model)

    def watch_admission(self, model: str, rates: Callable[[], dict[str, float] | None]) -> None:
        """``admission_rate{model,kind}``, read from the controller at scrape time.

        ``rates`` gives the admitted rate per minute by kind, or None while the controller is
        off (the gauge then reads NaN).
        """

        def reader(kind: str) -> Callable[[], float]:
            def read() -> float:
                now = rates()
                return float("nan") if now is None else now.get(kind, float("nan"))

            return read

        for kind in ("requests", "input_tokens", "output_tokens"):
            self.admission_rate.labels(model, kind).set_function(reader(kind))

    def exposition(self, openmetrics: bool = False) -> bytes:
        """Prometheus' text format; OpenMetrics (which carries exemplars) when asked."""
        if openmetrics:
            body: bytes = openmetrics_latest(self.registry)  # type: ignore[no-untyped-call]
            return body
        return generate_latest(self.registry)

    def link_traces(self, trace_ids: TraceIdSource) -> None:
        """Exemplars on the latency histograms: each bucket keeps the trace id of its
        latest observation (``observability/tracing.py``). Call before any series exists."""
        self.model_latency.with_exemplars(trace_ids)
        self.processing.with_exemplars(trace_ids)
        self.exemplars = True

    def catalogue(self) -> dict[str, tuple[str, ...]]:
        """Every series name this process can expose, with its label names.

        Dashboards and alert rules are checked against it, so that a renamed metric cannot
        leave a panel or an alert silently empty.
        """
        suffixes = {
            "counter": ("_total",),
            "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count"),
        }
        out: dict[str, tuple[str, ...]] = {}
        for collector in set(self.registry._collector_to_names):
            names: Any = getattr(collector, "labelnames", None) or getattr(
                collector, "_labelnames", ()
            )
            labels = tuple(names)
            describe: Any = getattr(collector, "describe", lambda: ())
            for family in list(describe()) or list(collector.collect()):
                for suffix in suffixes[family.type]:
                    extra = ("le",) if suffix == "_bucket" else ()
                    out[family.name + suffix] = labels + extra
        return out


class Cost(Protocol):
    """What one model call draws from each rate-limit bucket (``admission.Cost``)."""

    @property
    def requests(self) -> float: ...
    @property
    def input_tokens(self) -> float: ...
    @property
    def output_tokens(self) -> float: ...


class AdmissionSeries:
    """The admission gate's series for one tier and model (``admission.AdmissionObserver``)."""

    def __init__(self, m: Metrics, tier: str, model: str) -> None:
        self._wait = m.admission_wait.labels(tier, model)
        self._waiting = m.admission_waiting.labels(tier, model)
        self._held = m.admission_held.labels(tier, model)
        self._est = {k: m.admission_estimated.labels(tier, model, k) for k in ("input", "output")}
        self._act = {k: m.admission_actual.labels(tier, model, k) for k in ("input", "output")}
        self._ratio = m.admission_error.labels(tier, model)
        self._used = {
            k: m.ratelimit_used.labels(tier, model, k)
            for k in ("requests", "input_tokens", "output_tokens")
        }
        self._limited = m.rate_limited.labels(tier, model)

    def waited(self, seconds: float, held: bool) -> None:
        self._wait.observe(seconds)
        if held:
            self._held.inc()

    def waiting(self, delta: int) -> None:
        self._waiting.inc(delta)

    def estimated(self, estimate: Cost, actual: Cost) -> None:
        self._est["input"].inc(estimate.input_tokens)
        self._est["output"].inc(estimate.output_tokens)
        self._act["input"].inc(actual.input_tokens)
        self._act["output"].inc(actual.output_tokens)
        if estimate.input_tokens > 0:
            self._ratio.observe(actual.input_tokens / estimate.input_tokens)

    def used(self, actual: Cost) -> None:
        self._used["requests"].inc(actual.requests)
        self._used["input_tokens"].inc(actual.input_tokens)
        self._used["output_tokens"].inc(actual.output_tokens)

    def rate_limited(self) -> None:
        self._limited.inc()


class TierSeries:
    """Children of the per-tier series, bound to one tier."""

    def __init__(self, m: Metrics, tier: str) -> None:
        self.requests = m.requests.labels(tier)
        self.in_flight = m.in_flight.labels(tier)
        self.awaiting_ack = m.awaiting_ack.labels(tier)
        self.in_flight_limit = m.in_flight_limit.labels(tier)
        self.processing = m.processing.labels(tier)
        self.paused_partitions = m.paused_partitions.labels(tier)
        self.circuit_open = m.circuit_open.labels(tier)
        self.abandoned = m.abandoned.labels(tier)
        self.uncommitted = m.uncommitted.labels(tier)
        self.produce_errors = m.produce_errors.labels(tier)
        self.ready = m.ready.labels(tier)


class _ModelSeries:
    def __init__(self, m: Metrics, tier: str, model: str, shadow: str) -> None:
        self.latency = m.model_latency.labels(tier, model)
        self.confidence = m.confidence.labels(tier, model)
        self.cost = m.cost.labels(tier, model, shadow)
        self.invalid = m.invalid_answers.labels(tier, model)
        self.input, self.output, self.cache_write, self.cache_read = (
            m.tokens.labels(tier, model, kind, shadow) for kind in TOKEN_TYPES
        )
