"""The model side of a tier, assembled from settings: profile, client, admission gate, breaker,
in-flight limit and caller (:class:`ModelStack`), built by :func:`build_model_stacks`.

Everything between the SDK and a tier's handler is connected here, inside ``model/``: the
adapter hands each response's rate-limit headers to its caller, which feeds the metrics and the
admission gate it holds (one gate per rate-limit group, shared by the tiers of this process
whose models draw from it). The gate's share of the deployment-wide limit is this process's
share of its partitions, which it reads from the first consumer that :meth:`ModelStack.follow`
gives it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anthropic

from escalator.config import Settings
from escalator.errors import ConfigError, ModelUnavailable
from escalator.model.adapter import AnthropicClassifier, RateLimits
from escalator.model.admission import Admission, Budget, TokenEstimate, Tuning
from escalator.model.breaker import CircuitBreaker
from escalator.model.caller import ModelCaller, ModelClient, RetryPolicy
from escalator.model.check import ModelFacts, check_model
from escalator.model.holds import Hold, HoldClock, held_by
from escalator.model.limits import AdaptiveLimit
from escalator.model.prices import PriceTable
from escalator.model.profiles import ModelProfile, ProfileTable, load_profiles, rate_limit_group
from escalator.model.task import Task
from escalator.observability.logs import log
from escalator.observability.metrics import Metrics

# The hold lines (api_hold, api_hold_cleared) keep the logger they were always written with.
logger = logging.getLogger("escalator.app")
SIM_API_KEY = "simulator-no-key"
CACHE_TTL_S = {"5m": 300.0, "1h": 3600.0}
#: The least max_tokens a model that always thinks (Opus 5.5, Fable 5.1) may be given.
ALWAYS_THINKING_MIN_TOKENS = 1024

#: Builds a tier's ModelClient: ``(tier, model, task, prices)`` (fakes in tests, benchmarks).
ModelFactory = Callable[[str, str, Task, PriceTable], ModelClient]


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """Which model a tier calls, and the setting that names it (for errors)."""

    tier: str
    model: str
    variable: str


def anthropic_client(settings: Settings) -> anthropic.AsyncAnthropic:
    m = settings.model
    if m.api_key is None and m.base_url is None:
        raise ConfigError(
            "ANTHROPIC_API_KEY is not set and ANTHROPIC_BASE_URL does not point at a simulator"
        )
    return anthropic.AsyncAnthropic(
        api_key=m.api_key.get() if m.api_key else SIM_API_KEY,
        base_url=m.base_url,
        max_retries=0,  # every retry is ours, and counted: model.ModelCaller
        open_telemetry=False,  # no SDK spans (they may carry text): observability/tracing.py
        timeout=m.timeout_s,
    )


def model_profiles(settings: Settings, choices: Sequence[ModelChoice]) -> dict[str, ModelProfile]:
    """The request profile of each tier's model (a start-up error if there is none)."""
    table: ProfileTable = load_profiles(settings.model.profiles_file)
    out = {}
    for c in choices:
        profile = table.require(c.model, c.variable)
        override = settings.model.max_tokens
        if override is not None:
            if profile.always_thinks and override < ALWAYS_THINKING_MIN_TOKENS:
                raise ConfigError(
                    f"ESCALATOR_MODEL_MAX_TOKENS={override} leaves no room for the thinking of "
                    f"{c.model}, which always thinks before answering; use at least "
                    f"{ALWAYS_THINKING_MIN_TOKENS}, or leave it unset ({profile.max_tokens})"
                )
            profile = dataclasses.replace(profile, max_tokens=override)
        out[c.tier] = profile
    return out


def check_prices(prices: PriceTable, choices: Sequence[ModelChoice]) -> None:
    """A ConfigError naming the variable of the first model without a price."""
    for c in choices:
        if c.model not in prices.prices:
            raise ConfigError(
                f"{c.variable}={c.model!r} has no price in price table "
                f"{prices.version}; add it with ESCALATOR_PRICES_FILE"
            )


class SharesPartitions(Protocol):
    """What the gate reads of a consumer: its share of its topic's partitions."""

    @property
    def partition_share(self) -> float: ...


class Share:
    """This process's share of its rate-limit group's work: the partition share of the first
    consumer that follows it (1.0 until one does)."""

    def __init__(self) -> None:
        self._source: SharesPartitions | None = None

    def follow(self, source: SharesPartitions) -> None:
        if self._source is None:
            self._source = source

    def __call__(self) -> float:
        return self._source.partition_share if self._source is not None else 1.0


@dataclass
class _Relay:
    """Adapter -> caller: the adapter is built before the caller it reports to."""

    to: ModelCaller | None = None

    def __call__(self, model: str, limits: RateLimits) -> None:
        if self.to is not None:
            self.to.rate_limits_seen(model, limits)


@dataclass(frozen=True, slots=True)
class ModelStack:
    """One tier's model side, ready for its handler (``caller``) and its worker (``limit``)."""

    choice: ModelChoice
    profile: ModelProfile
    caller: ModelCaller
    admission: Admission
    breaker: CircuitBreaker
    limit: AdaptiveLimit
    #: The tier's hold now (account or outage), with when it began and ends.
    hold: Callable[[], Hold | None]
    share: Share

    @property
    def tier(self) -> str:
        return self.choice.tier

    def follow(self, consumer: SharesPartitions) -> None:
        """Let the admission gate take its share of the limit from ``consumer``'s partitions
        (the first consumer of the gate's models that is given counts)."""
        self.share.follow(consumer)


@dataclass
class ModelStacks:
    """The model stacks of this process's tiers, with what they share: the API client."""

    by_tier: dict[str, ModelStack]
    #: Start-up checks of each configured model (GET /v1/models/{id}); empty with fakes.
    checks: list[Callable[[], Awaitable[ModelFacts]]] = field(default_factory=list)
    client: anthropic.AsyncAnthropic | None = None

    def __getitem__(self, tier: str) -> ModelStack:
        return self.by_tier[tier]

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()


def build_model_stacks(
    settings: Settings,
    choices: Sequence[ModelChoice],
    *,
    task: Task,
    prices: PriceTable,
    profiles: dict[str, ModelProfile],
    metrics: Metrics,
    model_factory: ModelFactory | None = None,
    client: anthropic.AsyncAnthropic | None = None,
    traced: Callable[[ModelClient], ModelClient] = lambda client: client,
) -> ModelStacks:
    """One :class:`ModelStack` per tier, over one API client: ``client`` if given (tests give
    one over a fake transport), else one from the settings; or over ``model_factory``'s
    clients (fakes, benchmarks), with no API client at all. The stacks close the client."""
    s, p = settings, settings.pipeline
    checks: list[Callable[[], Awaitable[ModelFacts]]] = []
    if model_factory is None:
        client = client or anthropic_client(settings)
        if s.model.check_models:
            checks = [_check(client, c.model, profiles[c.tier], c.variable) for c in choices]
    else:
        client = None
    gates: dict[str, tuple[Admission, Share]] = {}
    for c in choices:
        group = rate_limit_group(c.model)
        if group not in gates:
            share = Share()
            gate = Admission(
                Budget(
                    Tuning(target=s.admission.target),
                    cap=s.admission.caps.get(c.model),
                    share=share,
                ),
                TokenEstimate(profiles[c.tier].tokenizer_factor),
                max_tokens=profiles[c.tier].max_tokens,
                enabled=s.admission.enabled,
                observer=metrics.admission(c.tier, c.model),
                count_cache_reads=s.admission.count_cache_reads,
            )
            metrics.watch_admission(c.model, _admitted_rates(gate))
            gates[group] = gate, share
    policy = RetryPolicy.from_settings(settings)
    stacks: dict[str, ModelStack] = {}
    for c in choices:
        tier, model = c.tier, c.model
        relay = _Relay()
        if client is None:
            assert model_factory is not None
            adapter = model_factory(tier, model, task, prices)
        else:
            adapter = AnthropicClassifier(
                client,
                tier=tier,
                model=model,
                task=task,
                prices=prices,
                profile=profiles[tier],
                cache_ttl=s.model.cache_ttl,
                on_rate_limits=relay,
            )
        limit = AdaptiveLimit(p.max_in_flight, enabled=p.adaptive_concurrency)
        clock = HoldClock()
        breaker = CircuitBreaker(
            window=p.breaker_window,
            failure_ratio=p.breaker_failure_ratio,
            cooldown_s=p.breaker_cooldown_s,
            cooldown_max_s=p.breaker_cooldown_max_s,
            blocked_cooldown_s=p.blocked_probe_s,
            on_hold_change=_hold_gauge(metrics, tier, clock),
        )
        gate, share = gates[rate_limit_group(model)]
        caller = ModelCaller(
            traced(adapter),
            breaker,
            policy,
            on_retry=_count_retry(metrics, tier),
            limit=limit,
            warm_ttl_s=0.9 * CACHE_TTL_S[s.model.cache_ttl],
            on_warmup=metrics.warmups.labels(tier, model).inc,
            admission=gate,
            on_rate_limits=metrics.observe_rate_limits,
        )
        relay.to = caller
        hold = held_by(caller, clock)
        metrics.held_since.labels(tier).set_function(_epoch_of(hold, "since_s"))
        metrics.hold_ends.labels(tier).set_function(_epoch_of(hold, "ends_at_s"))
        stacks[tier] = ModelStack(c, profiles[tier], caller, gate, breaker, limit, hold, share)
    return ModelStacks(stacks, checks, client)


def _count_retry(metrics: Metrics, tier: str) -> Callable[[ModelUnavailable], None]:
    def count(exc: ModelUnavailable) -> None:
        metrics.retries.labels(tier, exc.kind).inc()

    return count


def _hold_gauge(metrics: Metrics, tier: str, clock: HoldClock) -> Callable[[str | None], None]:
    """Keeps ``api_blocked{tier,reason}`` at 1 for the current hold reason, 0 for the last;
    starts the tier's hold clock the moment the account is blocked."""
    last: list[str] = []

    def change(reason: str | None) -> None:
        if reason is not None:
            clock.observe(reason, None)
        for old in last:
            metrics.api_blocked.labels(tier, old).set(0)
        last.clear()
        if reason is not None:
            metrics.api_blocked.labels(tier, reason).set(1)
            last.append(reason)
        log(
            logger,
            "api_hold" if reason else "api_hold_cleared",
            logging.WARNING,
            tier=tier,
            reason=reason,
        )

    return change


def _epoch_of(hold: Callable[[], Hold | None], name: str) -> Callable[[], float]:
    def epoch() -> float:
        now = hold()
        value = getattr(now, name, None) if now is not None else None
        return float(value) if value is not None else 0.0

    return epoch


def _admitted_rates(admission: Admission) -> Callable[[], dict[str, float] | None]:
    def rates() -> dict[str, float] | None:
        return admission.budget.rates_per_minute() if admission.enabled else None

    return rates


def _check(
    client: anthropic.AsyncAnthropic, model: str, profile: ModelProfile, variable: str
) -> Callable[[], Awaitable[ModelFacts]]:
    return lambda: check_model(client, model, profile, variable)
