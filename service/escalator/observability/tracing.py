"""Tracing: OpenTelemetry spans for every record, every output and every model call.

Off unless ESCALATOR_TRACING or the standard OTEL_* variables turn it on
(:class:`~escalator.config.TracingSettings`); then the ``otel`` extra must be installed, and
the OpenTelemetry SDK reads its own variables (endpoint, headers, sampler, resource, batch
sizes). Off, :func:`start` gives a :class:`Tracing` whose wrappers hand back what they were
given: the per-record path pays for the hooks below only (a context-variable read each). A
trace the sampler leaves out makes no child spans (BENCHMARKS.md, B1t: the cost of each).

On, the service's parts are wrapped where app.py assembles them:

- the tier's handler: a Kafka consumer ``process`` span per record (kind CONSUMER), whose
  parent is the context in the record's ``traceparent`` (W3C; also a link to it, as the
  messaging conventions ask), or a new trace without one. A handler with ``handle_batch``
  (the cheap tier: tier 0 predicts a fetched batch in one call) is still called per batch:
  the spans of a batch open before it is handled, a record answered at once carries its span
  to the delivery wrapper in its outputs (no task, so no context of its own), and a record
  that waits for a model runs its coroutine in its span's context, as with ``handle``.
  Hooks called by ``handle_batch`` itself, outside the coroutines it returns, find no
  record: the cheap tier calls none there, but observes tier 0's latency there, which so
  has no exemplar;
- the tier's delivery strategy: a ``send`` span (kind PRODUCER) per output, child of the
  ``process`` span, written into the output's ``traceparent``: the strong tier's ``process``
  span of an escalation continues the same trace, and so does whoever reads a result. It ends
  when the strategy has the output (at-least-once: acknowledged by the broker); the
  ``process`` span ends with the last of them;
- each model client: a ``chat {model}`` span (kind CLIENT) per API call, with the GenAI
  attributes, the cost and the tier;
- the review console (:meth:`Tracing.decision`): a ``process`` span per human decision, under
  the strong tier's ``send`` span of the item, and a ``send`` span per output it publishes.

Hooks the rest of the service calls (no-ops unless a span of ours is current):
:func:`escalated` (tiers: why the record was or is escalated), :func:`response` (the model
client: the response's id and model), :func:`trace_id` (metrics: exemplars).

Request text never goes into a span: no attribute is taken from a request's value, and the
model client's text argument is never read here. The Anthropic SDK's own spans (which could
carry content, by its ANTHROPIC_OPEN_TELEMETRY_* variables) are turned off in app.py, so the
``chat`` span below is the only one per call. Attribute names: OpenTelemetry semantic
conventions v1.44.0 (SEMCONV), messaging and GenAI; docs/OPERATIONS.md, "Tracing".
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, cast

from escalator.config import TracingSettings
from escalator.contract.messages import H_PREFIX, Attempt
from escalator.errors import ConfigError, EscalatorError
from escalator.observability.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

#: The semantic conventions followed (the version opentelemetry-semantic-conventions 0.66b2
#: implements); spans carry its schema URL.
SEMCONV = "1.44.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV}"
SCOPE = "escalator"
DEFAULT_SERVICE_NAME = "escalator"
REASON_HEADER = H_PREFIX + "reason"

T = TypeVar("T")


class _Open(NamedTuple):
    """The ``process`` span of the record this task handles, and its trace id (hex), None
    when the sampler left the trace out (then no child span is made: see _TracedDelivery)."""

    span: Span
    trace_id: str | None


#: Per record task: its open ``process`` span (set by the handler wrapper, read by the
#: delivery wrapper, the hooks and the exemplars; each record that waits for a model is its
#: own asyncio task; one answered at once in a batch carries it in :class:`_Answered`).
_record: ContextVar[_Open | None] = ContextVar("escalator_trace_record", default=None)
#: The ``chat`` span of the model call in progress in this task.
_model: ContextVar[Span | None] = ContextVar("escalator_trace_model", default=None)


def escalated(reason: str) -> None:
    """Hook (tiers): the record is escalated, or arrived escalated, for ``reason``."""
    current = _record.get()
    if current is not None:
        current.span.set_attribute("escalator.escalation_reason", reason)


def response(response_id: str | None, response_model: str | None) -> None:
    """Hook (model client): the API's message id and the model that answered."""
    span = _model.get()
    if span is not None:
        if response_id:
            span.set_attribute("gen_ai.response.id", response_id)
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)


def trace_id() -> str | None:
    """The trace id of the record this task handles, if sampled (exemplars), or None."""
    current = _record.get()
    return current.trace_id if current is not None else None


# -- what is wrapped: the shapes engine/, tiers/ and model/ define (not imported: layering) ----
class _Record(Protocol):
    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: Any


class _Handler(Protocol):
    tier: str

    def handle(self, record: Any) -> list[Any] | Awaitable[list[Any]]: ...

    def should_pause(self) -> bool: ...


class _ModelClient(Protocol):
    tier: str
    model: str

    async def classify(self, text: str, *, credit_token: str | None = None) -> Attempt: ...


class Tracing:
    """Tracing off: every wrapper returns what it is given."""

    on = False

    def handler(self, inner: T, *, group: str) -> T:
        """``inner`` (a tier's Handler), with a ``process`` span per record."""
        return inner

    def delivery(self, inner: T) -> T:
        """``inner`` (a Delivery), with a ``send`` span per output."""
        return inner

    def model_client(self, inner: T) -> T:
        """``inner`` (a ModelClient), with a ``chat`` span per call."""
        return inner

    def link(self, metrics: Metrics) -> None:
        """Exemplars (trace ids) on the latency histograms of ``metrics``."""

    def decision(
        self, headers: Any, *, topic: str, partition: int, offset: int, group: str, queue: str
    ) -> HumanSpans:
        """The spans of one human decision on a review item that arrived with ``headers``
        (the review console: ``process`` for the item, ``send`` for each output)."""
        return _NO_SPANS

    async def shutdown(self) -> None:
        """Export what is left (the service stops)."""


class HumanSpans:
    """A human decision's spans. Off: none; the outputs keep the headers they are given."""

    def headers(self, topic: str, headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """``headers`` for an output to ``topic``, with its ``send`` span's context."""
        return headers

    def end(self, error: BaseException | None = None) -> None:
        """The outputs are acknowledged (or ``error`` stopped them)."""


_NO_SPANS = HumanSpans()


def check(settings: TracingSettings) -> None:
    """ConfigError, naming the variable that turned tracing on, when the ``otel`` extra (the
    SDK, or the OTLP exporter it needs) is not installed. Nothing is started."""
    if settings.on_by is None:
        return
    needed = ["opentelemetry.sdk.trace"]
    if "otlp" in settings.exporters:
        needed.append("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    for module in needed:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            raise ConfigError(
                f"{settings.on_by} turns tracing on, but {module} is not installed: "
                "pip install 'escalator[otel]' (or turn tracing off)"
            )


def start(settings: TracingSettings) -> Tracing:
    """The tracing the settings ask for. ConfigError, naming the variable that turned it on,
    when the ``otel`` extra is not installed."""
    if settings.on_by is None:
        return Tracing()
    check(settings)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError as exc:
        raise ConfigError(
            f"{settings.on_by} turns tracing on, but the OpenTelemetry SDK is not installed: "
            "pip install 'escalator[otel]' (or unset it)"
        ) from exc
    # The SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; without a name, ours.
    resource = Resource.create({"service.version": _version()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # its sampler: OTEL_TRACES_SAMPLER(_ARG)
    for name in settings.exporters:
        exporter: SpanExporter
        if name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise ConfigError(
                    f"{settings.on_by} turns tracing on, but the OTLP exporter is not "
                    "installed: pip install 'escalator[otel]'"
                ) from exc
            exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, headers...
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return _Tracing(provider)


def _version() -> str:
    try:
        return importlib.metadata.version("escalator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Tracing(Tracing):
    on = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace

        self._provider = provider
        self._tracer = trace.get_tracer(SCOPE, _version(), provider, schema_url=SCHEMA_URL)

    def handler(self, inner: T, *, group: str) -> T:
        return cast(T, _TracedHandler(cast(_Handler, inner), self._tracer, group))

    def delivery(self, inner: T) -> T:
        return cast(T, _TracedDelivery(inner, self._tracer))

    def model_client(self, inner: T) -> T:
        return cast(T, _TracedModel(cast(_ModelClient, inner), self._tracer))

    def link(self, metrics: Metrics) -> None:
        metrics.link_traces(trace_id)

    def decision(
        self, headers: Any, *, topic: str, partition: int, offset: int, group: str, queue: str
    ) -> HumanSpans:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import Link, SpanKind

        carrier = _carrier(headers)
        parent = propagate.extract(carrier) if carrier else None
        upstream = trace.get_current_span(parent).get_span_context() if parent else None
        links = [Link(upstream)] if upstream is not None and upstream.is_valid else None
        span = self._tracer.start_span(
            f"process {topic}",
            context=parent if links else context.Context(),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.kafka.offset": offset,
                "messaging.consumer.group.name": group,
                "escalator.tier": "human",
                "escalator.review_queue": queue,
            },
        )
        return _HumanSpans(self._tracer, span)

    async def shutdown(self) -> None:
        # The last batch goes out over HTTP: not on the event loop.
        await asyncio.to_thread(self._provider.shutdown)


# -- the process span ------------------------------------------------------------------------
class _TracedHandler:
    #: The inner handler's ``handle_batch``, traced (set in ``__init__`` when it has one);
    #: None otherwise, so that the engine calls ``handle`` (``__getattr__`` would forward it).
    handle_batch: Callable[[Sequence[_Record]], list[Any]] | None = None

    def __init__(self, inner: _Handler, tracer: Tracer, group: str) -> None:
        self._inner = inner
        self._tracer = tracer
        self._group = group
        self.tier = inner.tier
        thresholds = getattr(inner, "thresholds", None)
        self._threshold_version: str | None = getattr(thresholds, "version", None)
        self._inner_batch: Callable[[Sequence[_Record]], Sequence[Any]] | None = getattr(
            inner, "handle_batch", None
        )
        if self._inner_batch is not None:
            self.handle_batch = self._handle_batch

    def should_pause(self) -> bool:
        return self._inner.should_pause()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def handle(self, record: _Record) -> Coroutine[Any, Any, list[Any]]:
        """One record in its own task: its span opens when the task starts."""
        return self._in_span(record, None, None)

    def _handle_batch(self, records: Sequence[_Record]) -> list[Any]:
        """The records of one partition's fetched batch, in one call to the inner handler's
        ``handle_batch``: each its ``process`` span, opened first. An answer given at once is
        the outputs with their span (:class:`_Answered`), which the delivery wrapper ends; a
        coroutine (a model call) runs in its record's span context (:class:`_InSpan`)."""
        assert self._inner_batch is not None
        opened = [self._open(record) for record in records]
        try:
            works = self._inner_batch(records)
        except BaseException as exc:  # a bug (a handler answers every record): as ``handle``
            for current in opened:
                _failed(current.span, type(exc).__name__)
                current.span.end()
            raise
        out: list[Any] = []
        for record, current, work in zip(records, opened, works, strict=True):
            if isinstance(work, list):
                out.append(_Answered(work, current))
            else:
                out.append(_InSpan(self._in_span(record, current, work), work))
        return out

    def _open(self, record: _Record) -> _Open:
        """The record's ``process`` span, started, and its trace id if sampled."""
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import Link, SpanKind

        carrier = _carrier(record.headers)
        parent = propagate.extract(carrier) if carrier else None
        upstream = trace.get_current_span(parent).get_span_context() if parent else None
        links = [Link(upstream)] if upstream is not None and upstream.is_valid else None
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": self._group,
            "messaging.message.body.size": len(record.value or b""),
            "escalator.tier": self.tier,
        }
        if self._threshold_version is not None:
            attributes["escalator.threshold_version"] = self._threshold_version
        span = self._tracer.start_span(
            f"process {record.topic}",
            context=parent if links else context.Context(),  # none: a new trace
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        sampled = span.is_recording()
        return _Open(span, format(span.get_span_context().trace_id, "032x") if sampled else None)

    async def _in_span(
        self,
        record: _Record,
        current: _Open | None,
        work: list[Any] | Awaitable[list[Any]] | None,
    ) -> list[Any]:
        """The record's outputs, worked out in its span's context (the hooks, the model
        client's ``chat`` span and the delivery wrapper find the span there). ``current``
        and ``work`` come from ``handle_batch`` (the span and the inner handler's coroutine);
        None: ``handle``, which opens the span and asks the inner handler here."""
        from opentelemetry import context, trace

        if current is None:
            current = self._open(record)
        span = current.span
        _record.set(current)
        token = context.attach(trace.set_span_in_context(span))
        try:
            if work is None:
                work = self._inner.handle(record)
            return work if isinstance(work, list) else await work
        except BaseException as exc:
            # Cancelled (stopping, or parked instead): no delivery will end this span.
            _record.set(None)
            _failed(span, type(exc).__name__)
            span.end()
            raise
        finally:
            context.detach(token)


class _Answered(list[Any]):
    """A record's outputs that the inner ``handle_batch`` gave at once, with the record's open
    ``process`` span: the engine delivers them with no task, so with no context of its own
    for the delivery wrapper to read the span from (it reads it here, and gives the strategy
    a plain list)."""

    __slots__ = ("open",)

    def __init__(self, outputs: list[Any], current: _Open) -> None:
        super().__init__(outputs)
        self.open = current


class _InSpan(Coroutine[Any, Any, list[Any]]):
    """The traced coroutine of a record that waits for a model, given to the engine in
    place of the inner handler's. Closing it closes the inner one too: the engine closes
    what it queued and never started (stopping, revoked, parked), and a coroutine never
    started and never closed is a "never awaited" warning."""

    __slots__ = ("_inner", "_run")

    def __init__(self, run: Coroutine[Any, Any, list[Any]], inner: Awaitable[list[Any]]) -> None:
        self._run = run
        self._inner = inner

    def send(self, value: Any) -> Any:
        return self._run.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        if val is None and tb is None:
            return self._run.throw(typ)
        return self._run.throw(typ, val, tb)  # the old signature

    def close(self) -> None:
        self._run.close()  # started: closes the inner one it awaits
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()  # never started: nothing ran, and the inner one is still to close

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self._run.__await__()


def _failed(span: Span, error_type: str) -> None:
    """Mark a span failed, as the semantic conventions ask: ``error.type`` and status ERROR."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def _carrier(headers: Any) -> dict[str, str]:
    """The record's trace headers (``traceparent``, ``tracestate``, ``baggage``)."""
    out: dict[str, str] = {}
    for key, value in headers or ():
        if key in _TRACE_HEADERS and value:
            out[key] = bytes(value).decode("latin-1")
    return out


_TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})


# -- the send spans ----------------------------------------------------------------------------
class _TracedDelivery:
    """Forwards everything to the strategy; ``deliver`` adds a ``send`` span per output."""

    def __init__(self, inner: Any, tracer: Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    def __getattr__(self, name: str) -> Any:
        # bind, awaiting_ack, uncommitted, reserved, not_ready, advanced, commit, assigned,
        # revoking, release, revoked, close: the strategy's own.
        return getattr(self._inner, name)

    @property
    def awaiting_ack(self) -> int:
        return int(self._inner.awaiting_ack)

    @property
    def not_ready(self) -> Any:
        return self._inner.not_ready

    async def deliver(
        self, tp: Any, tracker: Any, done: Sequence[Any], *, at_once: bool = False
    ) -> None:
        """``done``: the engine's ``Done`` records; each that ran in a traced context (or was
        answered at once by a traced ``handle_batch``: :class:`_Answered`) gets a ``send``
        span per output, and its process span ends with the delivery."""
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        processes: list[Span] = []
        sends: list[Span] = []
        traced: list[Any] = []
        answered: _Open | None = None  # the last sampled record of a batch answered at once
        for d in done:
            if d.context is not None:  # it ran as a task, in its span's context
                current = d.context.get(_record)
                if current is not None:
                    d.context.run(_record.set, current._replace(span=_ENDED))
            elif isinstance(d.outputs, _Answered):  # answered at once by handle_batch
                current = d.outputs.open
                if current.trace_id is not None:
                    answered = current
            else:
                current = None
            if current is None:
                # Not a record of ours (a parked copy, kept byte for byte): as it is.
                traced.append(d)
                continue
            process = current.span
            processes.append(process)
            parent = trace.set_span_in_context(process)
            if current.trace_id is None:
                # Sampled out: no send spans (they would record nothing either); the outputs
                # carry the process span's context, flagged not sampled, so the next tier
                # leaves the trace out too (parent-based sampling) and it stays one trace.
                injected: dict[str, str] = {}
                propagate.inject(injected, context=parent)
                traced.append(d._replace(outputs=[_with_headers(o, injected) for o in d.outputs]))
                continue
            outputs: list[Any] = []
            for out in d.outputs:
                span = self._tracer.start_span(
                    f"send {out.topic}",
                    context=parent,
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.operation.name": "send",
                        "messaging.operation.type": "send",
                        "messaging.destination.name": out.topic,
                    },
                )
                sends.append(span)
                carrier: dict[str, str] = {}
                propagate.inject(carrier, context=trace.set_span_in_context(span))
                out = _with_headers(out, carrier)
                for key, value in out.headers:
                    if key == REASON_HEADER and value:
                        reason = bytes(value).decode()
                        process.set_attribute("escalator.dead_letter_reason", reason)
                        process.set_status(Status(StatusCode.ERROR))
                outputs.append(out)
            traced.append(d._replace(outputs=outputs))
        try:
            await self._inner.deliver(tp, tracker, traced, at_once=at_once)
        except BaseException as exc:
            for span in (*sends, *processes):
                if span.is_recording():
                    _failed(span, type(exc).__name__)
            raise
        finally:
            for span in (*sends, *processes):
                span.end()
        if answered is not None:
            # The engine observes the processing time of records delivered with no context of
            # their own in the context of this call (``_deliver_done``): the exemplar names
            # the last sampled one, as it would have in its own context (they were dispatched
            # together, so each observes the same value: the last observation wins).
            _record.set(answered._replace(span=_ENDED))


def _with_headers(out: Any, injected: dict[str, str]) -> Any:
    """``out`` with the injected trace headers in place of those it carried."""
    return out._replace(headers=_replaced(out.headers, injected))


def _replaced(headers: Any, injected: dict[str, str]) -> list[tuple[str, Any]]:
    kept = [(k, v) for k, v in headers or () if k not in injected]
    return kept + [(k, v.encode()) for k, v in injected.items()]


class _HumanSpans(HumanSpans):
    def __init__(self, tracer: Tracer, process: Span) -> None:
        self._tracer = tracer
        self._process = process
        self._sends: list[Span] = []

    def headers(self, topic: str, headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind

        span = self._process
        if span.is_recording():
            span = self._tracer.start_span(
                f"send {topic}",
                context=trace.set_span_in_context(self._process),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.name": "send",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": topic,
                },
            )
            self._sends.append(span)
        injected: dict[str, str] = {}
        propagate.inject(injected, context=trace.set_span_in_context(span))
        return _replaced(headers, injected)

    def end(self, error: BaseException | None = None) -> None:

        for span in (*self._sends, self._process):
            if error is not None:
                _failed(span, type(error).__name__)
            span.end()


class _EndedSpan:
    """Stands in for a delivered record's span: the hooks that come later set nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass


_ENDED = cast("Span", _EndedSpan())


# -- the model-call span -----------------------------------------------------------------------
class _TracedModel:
    def __init__(self, inner: _ModelClient, tracer: Tracer) -> None:
        self._inner = inner
        self._tracer = tracer
        self.tier = inner.tier
        self.model = inner.model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def _call(self, text: str, credit_token: str | None) -> Attempt:
        if credit_token is None:  # as the caller calls it: fakes may not take the keyword
            return await self._inner.classify(text)
        return await self._inner.classify(text, credit_token=credit_token)

    async def classify(self, text: str, *, credit_token: str | None = None) -> Attempt:
        record = _record.get()
        if record is not None and record.trace_id is None:  # its trace is sampled out
            return await self._call(text, credit_token)
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        span = self._tracer.start_span(
            f"chat {self.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": self.model,
                "gen_ai.output.type": "json",
                "escalator.tier": self.tier,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        mine = _model.set(span)
        try:
            attempt = await self._call(text, credit_token)
        except BaseException as exc:
            kind = getattr(exc, "kind", None) or getattr(exc, "reason", None)
            error = kind if isinstance(exc, EscalatorError) and kind else type(exc).__name__
            _failed(span, str(error))
            raise
        else:
            span.set_attributes(_attempt_attributes(attempt))
            return attempt
        finally:
            _model.reset(mine)
            context.detach(token)
            span.end()


def _attempt_attributes(a: Attempt) -> dict[str, Any]:
    """The GenAI usage of one answered call, and ours; never the request or answer text."""
    out: dict[str, Any] = {
        # The conventions' input tokens include the cached ones (Anthropic's do not).
        "gen_ai.usage.input_tokens": a.input_tokens + a.cache_read_tokens + a.cache_write_tokens,
        "gen_ai.usage.output_tokens": a.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": a.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": a.cache_write_tokens,
        # The same count under the name the GenAI conventions' successor registry and the
        # Anthropic SDK's own spans use (docs/OPERATIONS.md, "Tracing").
        "gen_ai.usage.cache_write.input_tokens": a.cache_write_tokens,
        "escalator.cost_usd": a.cost_usd,
        "escalator.answer_valid": a.valid,
    }
    finish: Sequence[str] = [a.stop_reason] if a.stop_reason else []
    if finish:
        out["gen_ai.response.finish_reasons"] = list(finish)
    if a.request_id:
        out["anthropic.request.id"] = a.request_id
    if a.label is not None:
        out["escalator.label"] = a.label
        out["escalator.confidence"] = a.confidence
    if a.error:
        out["escalator.answer_error"] = a.error
    if a.refusal_category:
        out["escalator.refusal_category"] = a.refusal_category
    return out
