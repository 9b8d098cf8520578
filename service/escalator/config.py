"""Environment -> frozen settings, parsed once at start-up.

Variables keep the names their ecosystems use (``KAFKA_BOOTSTRAP_SERVERS``,
``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``); everything else is ``ESCALATOR_*``. Every
value is validated here; a bad one raises :class:`ConfigError` naming the variable. Below
the CLI nothing reads ``os.environ``: each component is handed the part of this it needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args
from urllib.parse import urlsplit

from escalator.contract.messages import MAX_DEADLINE_S
from escalator.errors import ConfigError

T = TypeVar("T")

# Newest Haiku-class and Sonnet-class models known to the pinned anthropic SDK (2.14.0).
DEFAULT_CHEAP_MODEL = "claude-haiku-5-5"
DEFAULT_STRONG_MODEL = "claude-sonnet-5-5"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: With a SASL protocol and no ESCALATOR_KAFKA_SASL_MECHANISM (KafkaSettings keeps None
#: without SASL).
DEFAULT_SASL_MECHANISM = "SCRAM-SHA-512"
ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
PROCESSING_GUARANTEES: tuple[ProcessingGuarantee, ...] = get_args(ProcessingGuarantee)
DEFAULT_MAX_IN_FLIGHT = 64
#: ESCALATOR_MAX_UNCOMMITTED defaults to this many times ESCALATOR_MAX_IN_FLIGHT.
UNCOMMITTED_PER_IN_FLIGHT = 4
MAX_PORT = 65535
#: ESCALATOR_METRICS_PORT's default for each kind of process, so that a cheap tier, a strong
#: tier and a review console can run side by side on one host without a port clash.
#: (Kubernetes and compose set the variable to 9464 on every container.)
DEFAULT_METRICS_PORTS = {"cheap": 9464, "all": 9464, "strong": 9465, "review": 9466, "lane": 9467}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Variables whose value is never shown (``escalator config`` prints them redacted).
SECRET_VARIABLES = frozenset({"ANTHROPIC_API_KEY", "ESCALATOR_KAFKA_SASL_PASSWORD"})


class Secret:
    """A string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def parse_bootstrap(value: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` as (host, port) pairs; ValueError names a bad entry."""
    addresses = []
    for server in filter(None, (part.strip() for part in value.split(","))):
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{server!r} is not host:port")
        if not 1 <= int(port) <= MAX_PORT:
            raise ValueError(f"{server!r}: the port must be 1 to {MAX_PORT}")
        addresses.append((host, int(port)))
    return addresses


def redacted_url(url: str) -> str:
    """``url`` without the credentials a proxy URL may carry (``https://user:token@host``)."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"***@{parts.hostname}{port}").geturl()


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id: str = "escalator"
    #: ESCALATOR_KAFKA_UNREACHABLE_S: with no broker answering for this long, the service is
    #: not ready (``/readyz`` 503, with the reason).
    unreachable_s: float = 30.0

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return parse_bootstrap(self.bootstrap_servers)


def default_of(settings_class: type, name: str) -> Any:
    """A settings field's default: for the classes that take it as a constructor default, so
    that each default value is written once, on its settings field."""
    for f in fields(settings_class):
        if f.name == name:
            if f.default is MISSING:
                raise AttributeError(f"{settings_class.__name__}.{name} has no plain default")
            return f.default
    raise AttributeError(f"{settings_class.__name__} has no field {name!r}")


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the service reads or writes: its fields are the one list of them. Each is
    set by ``ESCALATOR_<FIELD>_TOPIC`` (:meth:`variables`): ESCALATOR_REQUESTS_TOPIC,
    ESCALATOR_ESCALATIONS_TOPIC, ESCALATOR_RESULTS_TOPIC, ESCALATOR_DEAD_LETTER_TOPIC,
    ESCALATOR_DECISIONS_TOPIC, ESCALATOR_REVIEWS_TOPIC, ESCALATOR_ADJUDICATIONS_TOPIC,
    ESCALATOR_PARKED_TOPIC, ESCALATOR_HANDOFF_TOPIC, ESCALATOR_LANE_STATE_TOPIC,
    ESCALATOR_TIER0_STATE_TOPIC."""

    requests: str = "escalator.requests"
    escalations: str = "escalator.escalations"
    results: str = "escalator.results"
    dead_letter: str = "escalator.dead-letter"
    decisions: str = "escalator.decisions"
    #: The human tier's queue: requests the strong tier handed on to people.
    reviews: str = "escalator.reviews"
    #: The measurement queue: a random sample of requests with both model answers.
    adjudications: str = "escalator.adjudications"
    #: Held records copied here before their input topic's retention would delete them
    #: (``engine/parking.py``); ``escalator parked replay`` sends them back.
    parked: str = "escalator.parked"
    #: The batch lane's ledger: requests the cheap tier handed to the lane (``lane/``), kept
    #: for :data:`HANDOFF_RETENTION_MS` (a batch may take 24 hours, then the fallback).
    handoff: str = "escalator.handoff"
    #: The batch lane's state, compacted: one record per batch (``lane/state.py``).
    lane_state: str = "escalator.lane-state"
    #: Tier 0's withdrawals, compacted: one record per withdrawn artefact version
    #: (``tier0/state.py``); read by a cheap tier with tier 0 on, at start-up.
    tier0_state: str = "escalator.tier0-state"

    def all(self) -> list[str]:
        """Every topic the service reads or writes, in field order."""
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name -> the environment variable that sets it."""
        return {f.name: f"ESCALATOR_{f.name.upper()}_TOPIC" for f in fields(cls)}


@dataclass(frozen=True, slots=True)
class ModelSettings:
    api_key: Secret | None
    base_url: str | None
    cheap_model: str = DEFAULT_CHEAP_MODEL
    strong_model: str = DEFAULT_STRONG_MODEL
    timeout_s: float = 30.0
    #: Overrides every profile's max_tokens when set (ESCALATOR_MODEL_MAX_TOKENS).
    max_tokens: int | None = None
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 20.0
    profiles_file: Path | None = None
    #: "hold" (default) or "escalate": what the cheap tier does when its model is down.
    cheap_unavailable: str = "hold"
    #: Ask GET /v1/models/{id} about each model at start-up.
    check_models: bool = True
    cache_ttl: str = "5m"
    #: The organisation's monthly spend cap in USD as the operator states it (the Console
    #: shows it; the Messages API does not): 0 is not stated.
    monthly_spend_cap_usd: float = 0.0

    @property
    def simulated(self) -> bool:
        """True when no real API key is configured: answers come from the simulator."""
        return self.api_key is None


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    cheap_group: str = "escalator-cheap"
    strong_group: str = "escalator-strong"
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    commit_interval_s: float = 2.0
    shutdown_grace_s: float = 25.0
    revoke_wait_s: float = 10.0
    max_text_chars: int = 20_000
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 45_000
    # A record that keeps failing transiently while the API serves others goes to the
    # dead-letter topic after this many attempts (it must not block its partition forever).
    poison_max_attempts: int = 12
    invalid_answer_attempts: int = 3
    breaker_window: int = 20
    breaker_failure_ratio: float = 0.5
    breaker_cooldown_s: float = 2.0
    breaker_cooldown_max_s: float = 30.0
    #: While the account is blocked (spend limit, billing, key, model), one probe call per this.
    blocked_probe_s: float = 30.0
    group_instance_id: str | None = None
    # Records not yet committed (in flight, awaiting acks, or done above a slower record) are
    # capped at this many per worker: it bounds the work a crash can repeat.
    max_uncommitted: int = UNCOMMITTED_PER_IN_FLIGHT * DEFAULT_MAX_IN_FLIGHT
    adaptive_concurrency: bool = True
    #: ESCALATOR_GC_TUNING: freeze what start-up built and collect the young generation less
    #: often while the service runs (engine/collector.py).
    gc_tuning: bool = True
    #: ESCALATOR_PROCESSING_GUARANTEE (validated at start-up, case-insensitive).
    processing_guarantee: ProcessingGuarantee = "at_least_once"
    transactional_id_prefix: str = "escalator"


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    threshold: float = 0.7
    label_thresholds: Mapping[str, float] = field(default_factory=dict)
    task_file: Path | None = None
    prices_file: Path | None = None
    thresholds_file: Path | None = None
    #: ESCALATOR_TIER0_FILE: a certified tier-0 artefact (tier0/artefact.py) the cheap tier
    #: answers with before any model call when it is confident; None: tier 0 off.
    tier0_file: Path | None = None
    #: ESCALATOR_TIER0_SAMPLE_RATE: the fraction of tier 0's answers also asked of the cheap
    #: model, the units of its live monitor (tier0/watch.py); 0: never watched.
    tier0_sample_rate: float = 0.05
    # Fraction of cheap-tier *accepted* requests also answered by the strong tier (shadow).
    shadow_rate: float = 0.05
    #: False-alarm probability of each live monitor of the thresholds file, per process.
    monitor_alpha: float = 0.01


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """Admission control from the rate-limit headers (``model/admission.py``)."""

    #: False: AIMD on 429s only, the behaviour before admission control.
    enabled: bool = True
    #: Fraction of each organisation limit the deployment aims to use.
    target: float = 0.95
    #: Hard cap per model for the whole deployment: (RPM, ITPM, OTPM).
    caps: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    #: The input limit that binds counts cache reads (``input_tokens_per_minute``, as a
    #: workspace limit may); False: the organisation's cache-aware limit.
    count_cache_reads: bool = False


@dataclass(frozen=True, slots=True)
class ReviewSettings:
    """The human tier, the adjudication sample and the review console (``review/``)."""

    #: ESCALATOR_HUMAN_TIER: the strong tier may hand a request on to people (reviews topic).
    human_tier: bool = False
    #: ESCALATOR_STRONG_THRESHOLD: with the human tier on, a strong answer below this
    #: confidence goes to review (a threshold file's strong thresholds replace it).
    strong_threshold: float = 0.5
    strong_label_thresholds: Mapping[str, float] = field(default_factory=dict)
    #: ESCALATOR_ADJUDICATE_DISAGREE / _AGREE: the probability that a request with both model
    #: answers is put before a person for measurement, when the answers differ / agree.
    adjudicate_disagree: float = 0.0
    adjudicate_agree: float = 0.0
    #: The console: its consumer group, where it listens, and who may use it.
    group: str = "escalator-review"
    host: str = "127.0.0.1"
    port: int = 8080
    #: One of these files is required by ``escalator review serve`` (checked there).
    tokens_file: Path | None = None
    passwords_file: Path | None = None
    #: An item leased to a reviewer returns to the queue after this long without a decision.
    lease_s: float = 600.0
    #: The alert bound: EscalatorReviewTooOld fires when the oldest item waits longer.
    max_age_s: float = 3600.0
    #: Set the session cookie's Secure flag (serve behind TLS); off for plain loopback.
    secure_cookies: bool = False
    #: At most this many items per queue are held in the console's memory per process.
    buffer: int = 1000


@dataclass(frozen=True, slots=True)
class ParkingSettings:
    """Holds that outlast retention (``kafka/retention.py``, ``engine/parking.py``)."""

    #: ESCALATOR_PARKING: copy held records to the parked topic before retention deletes them.
    enabled: bool = True
    #: ESCALATOR_PARK_AT: park a held partition once its oldest uncommitted record has used this
    #: share of its topic's retention (by time or by bytes).
    park_at: float = 0.5
    #: ESCALATOR_RETENTION_CHECK_S: how often each consumer looks at its partitions' deadlines.
    check_s: float = 30.0
    #: ESCALATOR_PARKED_RETENTION_MS: ``retention.ms`` of the parked topic when ``topics create``
    #: makes it; -1 keeps parked records until they are replayed and deleted by an operator.
    parked_retention_ms: int = -1
    #: ESCALATOR_PARKED_REPLAY_GROUP: the group whose offsets say what ``parked replay`` sent.
    replay_group: str = "escalator-parked-replay"


#: A batch's documented lifetime: the Message Batches API expires what is not done in 24 hours.
BATCH_EXPIRY_S = 24 * 3600.0
#: The hand-off topic's retention: a batch's 24 hours, its fallback, and days to spare for a
#: lane held (account trouble) or down.
HANDOFF_RETENTION_MS = 7 * 24 * 3600 * 1000


#: The Message Batches API's rate limits at the lowest usage tier the Rate limits page
#: tables (Start: 1,000 requests per minute to the batch endpoints, 200,000 batch requests in
#: the processing queue; docs/OPERATIONS.md, "The batch lane: its rate limits").
BATCH_RPM_LOWEST_TIER = 1_000
BATCH_QUEUE_LOWEST_TIER = 200_000

#: What ESCALATOR_MEASURE_LANE may say.
MEASURE_LANES = ("batch", "realtime")


@dataclass(frozen=True, slots=True)
class LaneSettings:
    """Deadlines, and the batch lane on the Message Batches API (``lane/``)."""

    #: ESCALATOR_BATCH_LANE: off by default, because batches are not eligible for Zero Data
    #: Retention. On: the cheap tier hands what can wait to the hand-off topic, and
    #: ``run --tier lane`` (or ``--tier all``) runs the lane worker (issue 24, ``lane/``).
    enabled: bool = False
    #: ESCALATOR_DEADLINE_S: the requests topic's default deadline, for requests that set no
    #: ``deadline_s`` of their own; None: none (answered in real time).
    deadline_s: float | None = None
    #: ESCALATOR_BATCH_EXPECTED_S: the completion time assumed until batches are observed
    #: (most batches end within an hour, every one within 24).
    expected_s: float = 3600.0
    #: ESCALATOR_BATCH_SLACK_FACTOR: how many times the lane's expected time (assembly +
    #: completion) a request's slack must cover to be sent to it.
    slack_factor: float = 2.0
    #: ESCALATOR_BATCH_FALLBACK_S: the time kept back, past the lane's, to answer in real time
    #: a request whose batch item expired, was canceled or errored.
    fallback_s: float = 300.0
    #: ESCALATOR_BATCH_MAX_AGE_S: a batch is submitted once its oldest request waited this long
    #: (or it reached the documented limits).
    max_age_s: float = 60.0
    #: ESCALATOR_LANE_GROUP: the lane worker's consumer group (it reads the hand-off topic).
    group: str = "escalator-lane"
    #: ESCALATOR_BATCH_POLL_S: how often the lane asks whether its batches have ended.
    poll_s: float = 10.0
    #: ESCALATOR_MEASURE_LANE: with the lane on, the strong model's shadow answers (which no
    #: reader waits for) go through batches at half the price (``batch``), or stay in real time
    #: (``realtime``: the strong tier answers them, and the live agreement test sees them at
    #: once). Tier 0's samples always stay in real time: its live test withdraws it.
    measure: str = "batch"
    #: ESCALATOR_LANE_QUEUE_LIMIT: the batch requests the lane lets into the processing queue
    #: (its batches not ended, across lane workers as read on the state topic); a batch that
    #: would pass it waits for one to end.
    queue_limit: int = BATCH_QUEUE_LOWEST_TIER
    #: ESCALATOR_LANE_RPM: requests per minute this lane process makes to the batch endpoints
    #: (create, retrieve, results, list), evenly spaced.
    rpm: int = BATCH_RPM_LOWEST_TIER
    #: ESCALATOR_LANE_MAX_WAITING: the requests one lane worker holds while they wait for
    #: their batch (its records' in-flight bound; no batch is cut larger). Its memory grows
    #: with it: docs/OPERATIONS.md, "The batch lane's memory".
    max_waiting: int = 10_000


#: The exporters OTEL_TRACES_EXPORTER may name (the ``otel`` extra ships OTLP over
#: http/protobuf, and the SDK's console exporter).
TRACE_EXPORTERS = ("otlp", "console")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """Whether spans are exported (``observability/tracing.py``). Everything else (endpoint,
    headers, sampler, resource) the OpenTelemetry SDK reads from its own OTEL_* variables."""

    #: The variable that turned tracing on (named by start-up errors), or None: off.
    #: ESCALATOR_TRACING=on/off decides; unset, tracing is on when OTEL_TRACES_EXPORTER names
    #: an exporter, unless OTEL_SDK_DISABLED=true. An OTLP endpoint alone does not turn it on:
    #: platforms inject OTEL_EXPORTER_OTLP_ENDPOINT into every pod, and a span per record
    #: costs about four fifths of a CPU-bound tier's throughput (BENCHMARKS.md, B1t).
    on_by: str | None = None
    #: OTEL_TRACES_EXPORTER, as a tuple of TRACE_EXPORTERS (default ``otlp``).
    exporters: tuple[str, ...] = ("otlp",)


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings
    model: ModelSettings
    topics: Topics = field(default_factory=Topics)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    parking: ParkingSettings = field(default_factory=ParkingSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    lane: LaneSettings = field(default_factory=LaneSettings)
    metrics_port: int = DEFAULT_METRICS_PORTS["cheap"]
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_text: bool = False
    topic_partitions: int = 6
    topic_replication: int = 1


@dataclass(frozen=True, slots=True)
class Source:
    """One variable as the configuration read it: its effective value (shown as text) and
    whether it came from the environment or is the default."""

    variable: str
    value: str
    from_environment: bool


class _Env:
    """Typed access to a mapping of variables; every error names the variable. Remembers each
    variable it was asked for, with the value it gave (``sources``)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.sources: dict[str, Source] = {}

    def _note(self, name: str, value: object) -> None:
        given = self.env.get(name)
        shown = "" if value is None else str(value)
        if isinstance(value, bool):
            shown = "true" if value else "false"
        if name in SECRET_VARIABLES and shown:
            shown = "(set; not shown)"
        self.sources[name] = Source(name, shown, given is not None and given.strip() != "")

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            self._note(name, None)
            return None
        self._note(name, value.strip())
        return value.strip()

    def get(self, name: str, default: T, parse: Callable[[str], T], what: str) -> T:
        value = self.raw(name)
        if value is None:
            self._note(name, default)
            return default
        try:
            parsed = parse(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}={value!r} is not {what}") from exc
        self._note(name, parsed)
        return parsed

    def text(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        self._note(name, value)
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.get(name, default, int, "an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise ConfigError(f"{name}={value} must be {bound}")
        return value

    def optional_integer(self, name: str, minimum: int = 0) -> int | None:
        """None when unset (the field's default is None), else as :meth:`integer`."""
        value = self.get(name, None, int, "an integer")
        if value is not None and value < minimum:
            raise ConfigError(f"{name}={value} must be at least {minimum}")
        return value

    def number(self, name: str, default: float, lo: float = 0.0, hi: float = math.inf) -> float:
        value = self.get(name, default, float, "a number")
        if not (lo <= value <= hi) or math.isnan(value):
            raise ConfigError(f"{name}={value} must be between {lo:g} and {hi:g}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            self._note(name, default)
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            self._note(name, True)
            return True
        if value.lower() in ("0", "false", "no", "off"):
            self._note(name, False)
            return False
        raise ConfigError(f"{name}={value!r} is not a boolean (on/off, true/false)")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).upper()
        if value not in choices:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return value

    def file(self, name: str) -> Path | None:
        value = self.raw(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"{name}={value!r}: no such file")
        return path


TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _topic(env: _Env, name: str, default: str) -> str:
    value = env.text(name, default)
    if not TOPIC_RE.match(value) or value in (".", ".."):
        raise ConfigError(f"{name}={value!r} is not a legal Kafka topic name")
    return value


def parse_label_thresholds(name: str, value: str | None) -> dict[str, float]:
    """``safe=0.85,unsafe=0.6`` -> mapping; the name is used in errors."""
    if not value:
        return {}
    out: dict[str, float] = {}
    for part in value.split(","):
        label, sep, number = part.partition("=")
        try:
            threshold = float(number)
        except ValueError:
            threshold = math.nan
        if not sep or not label.strip() or not (0.0 <= threshold <= 1.0):
            raise ConfigError(f"{name}: {part!r} is not LABEL=THRESHOLD with 0 <= THRESHOLD <= 1")
        out[label.strip()] = threshold
    return out


def parse_caps(
    name: str, value: str | None, models: tuple[str, ...]
) -> dict[str, tuple[int, int, int]]:
    """``MODEL=RPM:ITPM:OTPM[,MODEL=...]`` -> mapping; each model must be one configured."""
    if not value:
        return {}
    out: dict[str, tuple[int, int, int]] = {}
    for part in value.split(","):
        model, sep, spec = part.strip().partition("=")
        numbers = spec.split(":")
        if not sep or not model or len(numbers) != 3 or not all(n.isdigit() for n in numbers):
            raise ConfigError(f"{name}: {part.strip()!r} is not MODEL=RPM:ITPM:OTPM")
        rpm, itpm, otpm = (int(n) for n in numbers)
        if min(rpm, itpm, otpm) < 1:
            raise ConfigError(f"{name}: {part.strip()!r}: every limit must be at least 1")
        if model not in models:
            raise ConfigError(f"{name}: {model!r} is not a configured model ({', '.join(models)})")
        out[model] = (rpm, itpm, otpm)
    return out


def load_settings(
    environ: Mapping[str, str], *, require_kafka: bool = True, role: str = "cheap"
) -> Settings:
    """Parse and validate the whole configuration. Raises ConfigError naming the variable.

    ``role`` is the kind of process (``cheap``, ``strong``, ``all``, ``review``): it picks
    ESCALATOR_METRICS_PORT's default (DEFAULT_METRICS_PORTS). Every default is the dataclass
    field's (read from an instance built with defaults only): a default is written once, on
    its field.
    """
    return _load(_Env(environ), require_kafka, role)


def explain_settings(
    environ: Mapping[str, str], *, require_kafka: bool = True, role: str = "cheap"
) -> tuple[Settings, list[Source]]:
    """:func:`load_settings`, and every variable it read with its value and source, in the
    order read (secrets never shown)."""
    env = _Env(environ)
    settings = _load(env, require_kafka, role)
    return settings, list(env.sources.values())


def log_level(environ: Mapping[str, str]) -> str:
    """ESCALATOR_LOG_LEVEL, validated (the CLI needs it before anything else)."""
    return _log_level(_Env(environ), default_of(Settings, "log_level"))


def _log_level(env: _Env, default: str) -> str:
    value = env.text("ESCALATOR_LOG_LEVEL", default).upper()
    if value not in LOG_LEVELS:
        raise ConfigError(f"ESCALATOR_LOG_LEVEL={value!r} must be {', '.join(LOG_LEVELS)}")
    return value


def _tracing(env: _Env) -> TracingSettings:
    """ESCALATOR_TRACING, or the standard OTEL_* variables that mean "export spans"."""
    given = env.raw("ESCALATOR_TRACING")
    explicit = env.flag("ESCALATOR_TRACING", False) if given is not None else None
    variable = "OTEL_TRACES_EXPORTER"
    names = [n.strip().lower() for n in (env.raw(variable) or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in (*TRACE_EXPORTERS, "none")]
    if unknown or ("none" in names and len(names) > 1):
        raise ConfigError(
            f"{variable}={','.join(names)!r}: Escalator exports spans with "
            f"{' or '.join(TRACE_EXPORTERS)} (or none)"
        )
    disabled = (env.raw("OTEL_SDK_DISABLED") or "").lower() == "true"
    if explicit is not None:
        on_by = "ESCALATOR_TRACING" if explicit else None
    elif disabled or names == ["none"]:
        on_by = None
    else:
        on_by = variable if names else None
    if on_by is not None and disabled:
        on_by = None  # the SDK's own switch wins: its tracer would record nothing anyway
    if on_by is not None and names == ["none"]:
        raise ConfigError(f"{on_by} turns tracing on, but {variable}=none exports nothing")
    exporters = tuple(names) if names and names != ["none"] else ("otlp",)
    if on_by is not None and "otlp" in exporters:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.raw(name)
            if protocol is not None and protocol != "http/protobuf":
                raise ConfigError(
                    f"{name}={protocol!r}: Escalator's OTLP exporter speaks http/protobuf only"
                )
            if protocol is not None:
                break
    return TracingSettings(on_by=on_by, exporters=exporters)


def _lane(env: _Env) -> LaneSettings:
    """ESCALATOR_BATCH_LANE, ESCALATOR_DEADLINE_S and the lane rule's margins."""
    d = LaneSettings()
    enabled = env.flag("ESCALATOR_BATCH_LANE", d.enabled)
    deadline = env.get("ESCALATOR_DEADLINE_S", None, float, "a number of seconds")
    if deadline is not None and not 1.0 <= deadline <= MAX_DEADLINE_S:
        raise ConfigError(
            f"ESCALATOR_DEADLINE_S={deadline:g} must be between 1 and {MAX_DEADLINE_S}"
        )
    measure = env.text("ESCALATOR_MEASURE_LANE", d.measure).lower()
    if measure not in MEASURE_LANES:
        raise ConfigError(f"ESCALATOR_MEASURE_LANE={measure!r} must be batch or realtime")
    return LaneSettings(
        enabled=enabled,
        deadline_s=deadline,
        expected_s=env.number("ESCALATOR_BATCH_EXPECTED_S", d.expected_s, 1.0, BATCH_EXPIRY_S),
        slack_factor=env.number("ESCALATOR_BATCH_SLACK_FACTOR", d.slack_factor, 1.0, 100.0),
        fallback_s=env.number("ESCALATOR_BATCH_FALLBACK_S", d.fallback_s, 0.0, 86400.0),
        max_age_s=env.number("ESCALATOR_BATCH_MAX_AGE_S", d.max_age_s, 1.0, 86400.0),
        group=env.text("ESCALATOR_LANE_GROUP", d.group),
        poll_s=env.number("ESCALATOR_BATCH_POLL_S", d.poll_s, 0.1, 3600.0),
        measure=measure,
        queue_limit=env.integer("ESCALATOR_LANE_QUEUE_LIMIT", d.queue_limit, 1),
        rpm=env.integer("ESCALATOR_LANE_RPM", d.rpm, 1, 1_000_000),
        max_waiting=env.integer("ESCALATOR_LANE_MAX_WAITING", d.max_waiting, 1, 10_000),
    )


def _load(env: _Env, require_kafka: bool, role: str) -> Settings:
    bootstrap = env.raw("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap is None and require_kafka:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set (host:port[,host:port...])")
    bootstrap = bootstrap or ""
    try:
        addresses = parse_bootstrap(bootstrap)
    except ValueError as exc:
        raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS: {exc}") from None
    if not addresses and (require_kafka or bootstrap.strip()):
        # "," or " " would reach aiokafka as no broker at all.
        raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap!r} names no host:port")

    dk = KafkaSettings(bootstrap_servers=bootstrap)
    protocol = env.choice(
        "ESCALATOR_KAFKA_SECURITY_PROTOCOL", dk.security_protocol, SECURITY_PROTOCOLS
    )
    mechanism = None
    username = password = None
    if protocol.startswith("SASL"):
        mechanism = env.choice(
            "ESCALATOR_KAFKA_SASL_MECHANISM", DEFAULT_SASL_MECHANISM, SASL_MECHANISMS
        )
        username = env.raw("ESCALATOR_KAFKA_SASL_USERNAME")
        secret = env.raw("ESCALATOR_KAFKA_SASL_PASSWORD")
        if username is None:
            raise ConfigError(f"ESCALATOR_KAFKA_SASL_USERNAME is required with {protocol}")
        if secret is None:
            raise ConfigError(f"ESCALATOR_KAFKA_SASL_PASSWORD is required with {protocol}")
        password = Secret(secret)
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=username,
        sasl_password=password,
        ssl_cafile=env.file("ESCALATOR_KAFKA_SSL_CAFILE"),
        ssl_certfile=env.file("ESCALATOR_KAFKA_SSL_CERTFILE"),
        ssl_keyfile=env.file("ESCALATOR_KAFKA_SSL_KEYFILE"),
        client_id=env.text("ESCALATOR_KAFKA_CLIENT_ID", dk.client_id),
        unreachable_s=env.number("ESCALATOR_KAFKA_UNREACHABLE_S", dk.unreachable_s, 1.0, 3600.0),
    )

    api_key = env.raw("ANTHROPIC_API_KEY")
    base_url = env.raw("ANTHROPIC_BASE_URL")
    if base_url is not None and not re.match(r"^https?://[^\s/]+", base_url):
        raise ConfigError(f"ANTHROPIC_BASE_URL={base_url!r} is not an http(s) URL")
    dm = ModelSettings(api_key=None, base_url=None)
    model = ModelSettings(
        api_key=Secret(api_key) if api_key else None,
        base_url=base_url,
        cheap_model=env.text("ESCALATOR_CHEAP_MODEL", dm.cheap_model),
        strong_model=env.text("ESCALATOR_STRONG_MODEL", dm.strong_model),
        timeout_s=env.number("ESCALATOR_MODEL_TIMEOUT_S", dm.timeout_s, 0.1, 600.0),
        max_tokens=env.optional_integer("ESCALATOR_MODEL_MAX_TOKENS", 16),
        max_attempts=env.integer("ESCALATOR_MODEL_MAX_ATTEMPTS", dm.max_attempts, 1),
        backoff_initial_s=env.number(
            "ESCALATOR_BACKOFF_INITIAL_S", dm.backoff_initial_s, 0.0, 60.0
        ),
        backoff_max_s=env.number("ESCALATOR_BACKOFF_MAX_S", dm.backoff_max_s, 0.0, 600.0),
        profiles_file=env.file("ESCALATOR_MODEL_PROFILES_FILE"),
        cheap_unavailable=env.choice(
            "ESCALATOR_CHEAP_UNAVAILABLE", dm.cheap_unavailable, ("HOLD", "ESCALATE")
        ).lower(),
        check_models=env.flag("ESCALATOR_MODEL_CHECK", dm.check_models),
        cache_ttl=env.choice("ESCALATOR_CACHE_TTL", dm.cache_ttl, ("5M", "1H")).lower(),
        monthly_spend_cap_usd=env.number(
            "ESCALATOR_MONTHLY_SPEND_CAP_USD", dm.monthly_spend_cap_usd, 0.0
        ),
    )

    dp = PipelineSettings()
    grace = env.number("ESCALATOR_SHUTDOWN_GRACE_S", dp.shutdown_grace_s, 0.0, 3600.0)
    max_in_flight = env.integer("ESCALATOR_MAX_IN_FLIGHT", dp.max_in_flight, 1)
    guarantee = env.choice(
        "ESCALATOR_PROCESSING_GUARANTEE",
        dp.processing_guarantee,
        tuple(g.upper() for g in PROCESSING_GUARANTEES),
    ).lower()
    pipeline = PipelineSettings(
        cheap_group=env.text("ESCALATOR_CHEAP_GROUP", dp.cheap_group),
        strong_group=env.text("ESCALATOR_STRONG_GROUP", dp.strong_group),
        max_in_flight=max_in_flight,
        commit_interval_s=env.number(
            "ESCALATOR_COMMIT_INTERVAL_S", dp.commit_interval_s, 0.05, 600.0
        ),
        shutdown_grace_s=grace,
        revoke_wait_s=env.number(
            "ESCALATOR_REVOKE_WAIT_S", min(dp.revoke_wait_s, grace), 0.0, 3600.0
        ),
        max_text_chars=env.integer("ESCALATOR_MAX_TEXT_CHARS", dp.max_text_chars, 1),
        max_poll_interval_ms=env.integer(
            "ESCALATOR_MAX_POLL_INTERVAL_MS", dp.max_poll_interval_ms, 1000
        ),
        session_timeout_ms=env.integer("ESCALATOR_SESSION_TIMEOUT_MS", dp.session_timeout_ms, 1000),
        poison_max_attempts=env.integer("ESCALATOR_POISON_MAX_ATTEMPTS", dp.poison_max_attempts, 1),
        invalid_answer_attempts=env.integer(
            "ESCALATOR_INVALID_ANSWER_ATTEMPTS", dp.invalid_answer_attempts, 1
        ),
        breaker_window=env.integer("ESCALATOR_BREAKER_WINDOW", dp.breaker_window, 2),
        breaker_failure_ratio=env.number(
            "ESCALATOR_BREAKER_FAILURE_RATIO", dp.breaker_failure_ratio, 0.01, 1.0
        ),
        breaker_cooldown_s=env.number(
            "ESCALATOR_BREAKER_COOLDOWN_S", dp.breaker_cooldown_s, 0.01, 600.0
        ),
        breaker_cooldown_max_s=env.number(
            "ESCALATOR_BREAKER_COOLDOWN_MAX_S", dp.breaker_cooldown_max_s, 0.01, 3600.0
        ),
        blocked_probe_s=env.number("ESCALATOR_BLOCKED_PROBE_S", dp.blocked_probe_s, 0.05, 3600.0),
        group_instance_id=env.raw("ESCALATOR_GROUP_INSTANCE_ID"),
        max_uncommitted=env.integer(
            "ESCALATOR_MAX_UNCOMMITTED", UNCOMMITTED_PER_IN_FLIGHT * max_in_flight, max_in_flight
        ),
        adaptive_concurrency=env.flag("ESCALATOR_ADAPTIVE_CONCURRENCY", dp.adaptive_concurrency),
        gc_tuning=env.flag("ESCALATOR_GC_TUNING", dp.gc_tuning),
        processing_guarantee=cast(ProcessingGuarantee, guarantee),
        transactional_id_prefix=env.text(
            "ESCALATOR_TRANSACTIONAL_ID_PREFIX", dp.transactional_id_prefix
        ),
    )
    dr = RoutingSettings()
    routing = RoutingSettings(
        threshold=env.number("ESCALATOR_THRESHOLD", dr.threshold, 0.0, 1.0),
        label_thresholds=parse_label_thresholds(
            "ESCALATOR_LABEL_THRESHOLDS", env.raw("ESCALATOR_LABEL_THRESHOLDS")
        ),
        task_file=env.file("ESCALATOR_TASK_FILE"),
        prices_file=env.file("ESCALATOR_PRICES_FILE"),
        thresholds_file=env.file("ESCALATOR_THRESHOLDS_FILE"),
        tier0_file=env.file("ESCALATOR_TIER0_FILE"),
        tier0_sample_rate=env.number("ESCALATOR_TIER0_SAMPLE_RATE", dr.tier0_sample_rate, 0.0, 1.0),
        shadow_rate=env.number("ESCALATOR_SHADOW_RATE", dr.shadow_rate, 0.0, 1.0),
        monitor_alpha=env.number("ESCALATOR_MONITOR_ALPHA", dr.monitor_alpha, 1e-9, 0.5),
    )
    da = AdmissionSettings()
    admission = AdmissionSettings(
        enabled=env.flag("ESCALATOR_ADMISSION", da.enabled),
        target=env.number("ESCALATOR_ADMISSION_TARGET", da.target, 0.5, 1.0),
        caps=parse_caps(
            "ESCALATOR_ADMISSION_CAP",
            env.raw("ESCALATOR_ADMISSION_CAP"),
            (model.cheap_model, model.strong_model),
        ),
        count_cache_reads=env.flag("ESCALATOR_ADMISSION_COUNT_CACHE_READS", da.count_cache_reads),
    )
    dt = Topics()
    topics = Topics(
        **{
            name: _topic(env, variable, getattr(dt, name))
            for name, variable in Topics.variables().items()
        }
    )
    dv = ReviewSettings()
    review = ReviewSettings(
        human_tier=env.flag("ESCALATOR_HUMAN_TIER", dv.human_tier),
        strong_threshold=env.number("ESCALATOR_STRONG_THRESHOLD", dv.strong_threshold, 0.0, 1.0),
        strong_label_thresholds=parse_label_thresholds(
            "ESCALATOR_STRONG_LABEL_THRESHOLDS", env.raw("ESCALATOR_STRONG_LABEL_THRESHOLDS")
        ),
        adjudicate_disagree=env.number(
            "ESCALATOR_ADJUDICATE_DISAGREE", dv.adjudicate_disagree, 0.0, 1.0
        ),
        adjudicate_agree=env.number("ESCALATOR_ADJUDICATE_AGREE", dv.adjudicate_agree, 0.0, 1.0),
        group=env.text("ESCALATOR_REVIEW_GROUP", dv.group),
        host=env.text("ESCALATOR_REVIEW_HOST", dv.host),
        port=env.integer("ESCALATOR_REVIEW_PORT", dv.port, 0, MAX_PORT),
        tokens_file=env.file("ESCALATOR_REVIEW_TOKENS_FILE"),
        passwords_file=env.file("ESCALATOR_REVIEW_PASSWORDS_FILE"),
        lease_s=env.number("ESCALATOR_REVIEW_LEASE_S", dv.lease_s, 1.0, 86400.0),
        max_age_s=env.number("ESCALATOR_REVIEW_MAX_AGE_S", dv.max_age_s, 1.0, 30 * 86400.0),
        secure_cookies=env.flag("ESCALATOR_REVIEW_SECURE_COOKIES", dv.secure_cookies),
        buffer=env.integer("ESCALATOR_REVIEW_BUFFER", dv.buffer, 1),
    )
    if review.tokens_file is not None and review.passwords_file is not None:
        raise ConfigError(
            "ESCALATOR_REVIEW_TOKENS_FILE and ESCALATOR_REVIEW_PASSWORDS_FILE are both set; "
            "choose one way for reviewers to sign in"
        )
    dpk = ParkingSettings()
    parked_retention = env.get(
        "ESCALATOR_PARKED_RETENTION_MS", dpk.parked_retention_ms, int, "an integer"
    )
    if parked_retention != -1 and parked_retention < 60_000:
        raise ConfigError(
            f"ESCALATOR_PARKED_RETENTION_MS={parked_retention} must be -1 (keep until deleted) "
            "or at least 60000"
        )
    parking = ParkingSettings(
        enabled=env.flag("ESCALATOR_PARKING", dpk.enabled),
        park_at=env.number("ESCALATOR_PARK_AT", dpk.park_at, 0.05, 0.95),
        check_s=env.number("ESCALATOR_RETENTION_CHECK_S", dpk.check_s, 0.1, 3600.0),
        parked_retention_ms=parked_retention,
        replay_group=env.text("ESCALATOR_PARKED_REPLAY_GROUP", dpk.replay_group),
    )
    if parking.enabled and topics.parked in (topics.requests, topics.escalations, topics.reviews):
        raise ConfigError(
            f"ESCALATOR_PARKED_TOPIC={topics.parked!r} is an input topic; parked records need "
            "a topic of their own"
        )
    ds = Settings(kafka=kafka, model=model)
    if role not in DEFAULT_METRICS_PORTS:
        raise ValueError(f"role {role!r} is not one of {', '.join(DEFAULT_METRICS_PORTS)}")
    return Settings(
        kafka=kafka,
        model=model,
        topics=topics,
        pipeline=pipeline,
        routing=routing,
        admission=admission,
        review=review,
        parking=parking,
        tracing=_tracing(env),
        lane=_lane(env),
        metrics_port=env.integer(
            "ESCALATOR_METRICS_PORT", DEFAULT_METRICS_PORTS[role], 0, MAX_PORT
        ),
        metrics_host=env.text("ESCALATOR_METRICS_HOST", ds.metrics_host),
        log_level=_log_level(env, ds.log_level),
        log_text=env.flag("ESCALATOR_LOG_TEXT", ds.log_text),
        topic_partitions=env.integer("ESCALATOR_TOPIC_PARTITIONS", ds.topic_partitions, 1),
        topic_replication=env.integer("ESCALATOR_TOPIC_REPLICATION", ds.topic_replication, 1),
    )
