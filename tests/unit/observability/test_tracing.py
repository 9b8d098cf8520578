"""observability/tracing.py with fakes: off it changes nothing; on, a record's spans, their
parents and links, the traceparent its outputs carry, the model call's attributes, no text;
a missing extra is a one-line start-up error; exemplars on the latency histograms.
(tests/integration/test_tracing.py runs the real thing against Jaeger.)"""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from escalator.config import TracingSettings, load_settings
from escalator.contract.messages import Attempt
from escalator.engine.delivery import Done, Output
from escalator.errors import ConfigError, ModelUnavailable
from escalator.observability import tracing
from escalator.observability.metrics import Metrics

TEXT = "a secret text about Kumquat7731"
UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"
UPSTREAM = ("traceparent", f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01".encode())


@dataclass
class FakeRecord:
    topic: str = "requests"
    partition: int = 3
    offset: int = 41
    key: bytes | None = b"k"
    value: bytes | None = b'{"id": "r-1", "text": "a secret text about Kumquat7731"}'
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [UPSTREAM])


@dataclass
class FakeModel:
    tier: str = "cheap"
    model: str = "claude-haiku-5-5"
    fail: bool = False

    async def classify(self, text: str, *, credit_token: str | None = None) -> Attempt:
        if self.fail:
            raise ModelUnavailable("overloaded", kind="overloaded")
        tracing.response("msg_01abc", "claude-haiku-5-5-20261101")
        return Attempt(
            tier=self.tier,
            model=self.model,
            label="safe",
            confidence=0.4,
            valid=True,
            input_tokens=10,
            output_tokens=5,
            cache_read_tokens=1000,
            cache_write_tokens=200,
            cost_usd=0.00123,
            stop_reason="end_turn",
            request_id="req_01xyz",
        )


@dataclass
class FakeThresholds:
    version: str = "cal-7"


@dataclass
class FakeHandler:
    model: Any
    tier: str = "cheap"
    thresholds: FakeThresholds = field(default_factory=FakeThresholds)
    dead_letter: bool = False

    async def handle(self, record: Any) -> list[Output]:
        await self.model.classify(TEXT)
        tracing.escalated("low_confidence")
        headers = list(record.headers)
        if self.dead_letter:
            return [
                Output("dlq", record.value, record.key, [*headers, ("x-escalator-reason", b"x")])
            ]
        return [Output("escalations", b"{}", record.key, headers), Output("decisions", b"{}", None)]

    def should_pause(self) -> bool:
        return False


@dataclass
class FakeDelivery:
    delivered: list[list[Output]] = field(default_factory=list)
    awaiting_ack: int = 0

    async def deliver(self, tp: Any, tracker: Any, done: list[Done]) -> None:
        self.delivered.extend(d.outputs for d in done)

    def reserved(self) -> int:
        return 7


def traced() -> tuple[tracing.Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracing._Tracing(provider), exporter


async def one_record(handler: Any, delivery: Any, record: Any) -> str | None:
    """What the worker does with a record that waits for a model: its handler in a task of
    its own, then its delivery (in a batch, from another task), with the context it ran in;
    the exemplar trace id read in that context, as the worker observes the histogram."""

    async def run() -> Done:
        outputs = await handler.handle(record)
        return Done(record.offset, outputs, 0.0, contextvars.copy_context())

    done = await asyncio.create_task(run())
    await asyncio.create_task(delivery.deliver(None, None, [done]))
    assert done.context is not None
    return done.context.run(tracing.trace_id)


async def test_off_the_parts_are_themselves_and_the_hooks_do_nothing() -> None:
    """Tracing off: every wrapper returns its argument (nothing on the per-record path but
    the hooks, which find no span), and no exemplars."""
    off = tracing.start(TracingSettings())
    handler, delivery, model = FakeHandler(FakeModel()), FakeDelivery(), FakeModel()
    assert off.handler(handler, group="g") is handler
    assert off.delivery(delivery) is delivery
    assert off.model_client(model) is model
    metrics = Metrics()
    off.link(metrics)
    assert not metrics.exemplars
    assert await one_record(handler, delivery, FakeRecord()) is None
    assert delivery.delivered[0][0].headers == [UPSTREAM]  # as it arrived
    await off.shutdown()


async def test_a_record_is_a_process_span_with_its_model_call_and_send_spans() -> None:
    """The process span continues (and links to) the record's traceparent; the chat span is
    its child with the GenAI attributes; each output has a send span, child of the process
    span, whose context replaces the traceparent the output would have carried."""
    on, exporter = traced()
    delivery = FakeDelivery()
    handler = on.handler(FakeHandler(on.model_client(FakeModel())), group="cheap-group")
    wrapped = on.delivery(delivery)
    assert wrapped.reserved() == 7 and wrapped.awaiting_ack == 0  # the rest is forwarded
    trace_id = await one_record(handler, wrapped, FakeRecord())
    assert trace_id == UPSTREAM_TRACE
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == [
        "chat claude-haiku-5-5",
        "process requests",
        "send decisions",
        "send escalations",
    ]
    process, chat = spans["process requests"], spans["chat claude-haiku-5-5"]
    assert process.kind is SpanKind.CONSUMER
    assert format(process.context.trace_id, "032x") == UPSTREAM_TRACE
    assert process.parent is not None and format(process.parent.span_id, "016x") == UPSTREAM_SPAN
    assert [format(link.context.span_id, "016x") for link in process.links] == [UPSTREAM_SPAN]
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "requests",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 41,
        "messaging.consumer.group.name": "cheap-group",
        "messaging.message.body.size": len(FakeRecord().value or b""),
        "escalator.tier": "cheap",
        "escalator.threshold_version": "cal-7",
        "escalator.escalation_reason": "low_confidence",
    }
    assert chat.kind is SpanKind.CLIENT
    assert chat.parent is not None and chat.parent.span_id == process.context.span_id
    assert dict(chat.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-5-5",
        "gen_ai.output.type": "json",
        "gen_ai.response.id": "msg_01abc",
        "gen_ai.response.model": "claude-haiku-5-5-20261101",
        "gen_ai.response.finish_reasons": ("end_turn",),
        "gen_ai.usage.input_tokens": 1210,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 200,
        "gen_ai.usage.cache_write.input_tokens": 200,
        "anthropic.request.id": "req_01xyz",
        "escalator.tier": "cheap",
        "escalator.cost_usd": 0.00123,
        "escalator.answer_valid": True,
        "escalator.label": "safe",
        "escalator.confidence": 0.4,
    }
    (outputs,) = delivery.delivered
    for out in outputs:
        send = spans[f"send {out.topic}"]
        assert send.kind is SpanKind.PRODUCER
        assert send.parent is not None and send.parent.span_id == process.context.span_id
        parents = [v for k, v in out.headers if k == "traceparent"]
        ctx = send.context
        assert parents == [f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01".encode()]
    for span in exporter.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert "Kumquat" not in str(value)


async def test_without_a_traceparent_a_record_starts_a_trace_of_its_own() -> None:
    """No (or a broken) traceparent: a root span, no link."""
    on, exporter = traced()
    handler = on.handler(FakeHandler(FakeModel()), group="g")
    for headers in ([], [("traceparent", b"00-garbage")]):
        exporter.clear()
        trace_id = await one_record(
            handler, on.delivery(FakeDelivery()), FakeRecord(headers=headers)
        )
        (process,) = [s for s in exporter.get_finished_spans() if s.name.startswith("process")]
        assert process.parent is None and not process.links
        assert trace_id == format(process.context.trace_id, "032x")


async def test_a_trace_the_sampler_leaves_out_costs_no_spans_and_stays_one_trace() -> None:
    """Sampled out (OTEL_TRACES_SAMPLER): no span is exported, no exemplar names it, and the
    outputs carry its context flagged not sampled, so the next tier leaves it out too."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    on = tracing._Tracing(provider)
    delivery = FakeDelivery()
    handler = on.handler(FakeHandler(on.model_client(FakeModel())), group="g")
    assert await one_record(handler, on.delivery(delivery), FakeRecord(headers=[])) is None
    assert exporter.get_finished_spans() == ()
    (outputs,) = delivery.delivered
    parents = {bytes(v) for out in outputs for k, v in out.headers if k == "traceparent"}
    (parent,) = parents
    assert len(parent) == 55 and int(parent[-2:], 16) & 1 == 0, parent  # the sampled bit
    # A producer that samples: the parent decides (parent-based), the record is traced.
    assert await one_record(handler, on.delivery(FakeDelivery()), FakeRecord()) == UPSTREAM_TRACE
    assert len(exporter.get_finished_spans()) == 4


async def test_a_dead_letter_and_a_failed_call_mark_their_spans() -> None:
    """A dead-lettered record's process span has the reason and an error status; a model
    call that fails has error.type, the kind of the failure."""
    on, exporter = traced()
    handler = on.handler(FakeHandler(FakeModel(), dead_letter=True), group="g")
    await one_record(handler, on.delivery(FakeDelivery()), FakeRecord())
    (process,) = [s for s in exporter.get_finished_spans() if s.name.startswith("process")]
    assert process.status.status_code is StatusCode.ERROR
    assert (process.attributes or {})["escalator.dead_letter_reason"] == "x"
    failing = on.model_client(FakeModel(fail=True))
    with pytest.raises(ModelUnavailable):
        await failing.classify(TEXT)
    chat = exporter.get_finished_spans()[-1]
    assert chat.name == "chat claude-haiku-5-5"
    assert (chat.attributes or {})["error.type"] == "overloaded"
    assert chat.status.status_code is StatusCode.ERROR


async def test_exemplars_name_the_trace_in_openmetrics_only() -> None:
    """With tracing on, the processing histogram's bucket carries the record's trace id in
    the OpenMetrics exposition; the Prometheus text format is unchanged."""
    on, _ = traced()
    metrics = Metrics()
    on.link(metrics)
    handler = on.handler(FakeHandler(FakeModel()), group="g")
    series = metrics.tier("cheap")

    async def run() -> Done:
        outputs = await handler.handle(FakeRecord())
        return Done(41, outputs, 0.0, contextvars.copy_context())

    done = await asyncio.create_task(run())
    await on.delivery(FakeDelivery()).deliver(None, None, [done])
    assert done.context is not None
    done.context.run(series.processing.observe, 0.3)
    openmetrics = metrics.exposition(openmetrics=True).decode()
    assert f'# {{trace_id="{UPSTREAM_TRACE}"}} 0.3' in openmetrics
    assert "trace_id" not in metrics.exposition().decode()


def test_settings_turn_it_on_by_the_standard_variables() -> None:
    """Unset: off. An exporter turns it on (an OTLP endpoint alone does not: platforms inject
    one everywhere), ESCALATOR_TRACING decides, OTEL_SDK_DISABLED=true turns it off."""
    base = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}

    def on_by(**env: str) -> str | None:
        return load_settings({**base, **env}).tracing.on_by

    assert on_by() is None
    assert on_by(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318") is None
    assert on_by(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://c:4318") is None
    assert on_by(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT="http://c") == (
        "OTEL_TRACES_EXPORTER"
    )
    assert on_by(OTEL_TRACES_EXPORTER="console") == "OTEL_TRACES_EXPORTER"
    assert on_by(OTEL_TRACES_EXPORTER="none", OTEL_EXPORTER_OTLP_ENDPOINT="http://c") is None
    assert on_by(ESCALATOR_TRACING="on") == "ESCALATOR_TRACING"
    assert on_by(ESCALATOR_TRACING="off", OTEL_TRACES_EXPORTER="otlp") is None
    assert on_by(OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="otlp") is None
    settings = load_settings({**base, "OTEL_TRACES_EXPORTER": "otlp,console"}).tracing
    assert settings.exporters == ("otlp", "console")


def test_a_missing_extra_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tracing on without the SDK: ConfigError naming the variable that turned it on."""
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_EXPORTER turns tracing on.*otel"):
        tracing.check(TracingSettings(on_by="OTEL_TRACES_EXPORTER"))
    tracing.check(TracingSettings())  # off: nothing is needed


BLOCK_SDK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, Block())
from escalator.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [["--help"], ["run", "--tier", "cheap"]])
def test_without_the_extra_the_service_runs_and_tracing_on_is_one_line(args: list[str]) -> None:
    """Without the otel extra the CLI works; ``run`` with tracing on exits 2 with one line
    naming ESCALATOR_TRACING, before it connects to anything."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ESCALATOR_", "KAFKA_"))
    }
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "ESCALATOR_METRICS_PORT": "0",
        "ESCALATOR_TRACING": "on",
    }
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_SDK, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if args == ["--help"]:
        assert done.returncode == 0, done.stderr
        return
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert "ESCALATOR_TRACING turns tracing on" in lines[0]
    assert "escalator[otel]" in lines[0]


async def test_metrics_are_openmetrics_only_when_asked_and_tracing_is_on() -> None:
    """/metrics: the Prometheus text format, as before, unless tracing is on and the scraper
    asks for OpenMetrics (the only format with exemplars)."""
    import httpx2 as httpx

    from escalator.observability.health import HealthServer

    asks = {"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"}
    for on in (False, True):
        metrics = Metrics()
        if on:
            traced()[0].link(metrics)
        server = HealthServer(
            metrics, host="127.0.0.1", port=0, live=lambda: True, ready=lambda: []
        )
        async with server, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{server.port}/metrics"
            plain = await client.get(url)
            asked = await client.get(url, headers=asks)
        assert plain.headers["content-type"].startswith("text/plain")
        kind = "application/openmetrics-text" if on else "text/plain"
        assert asked.headers["content-type"].startswith(kind)
        assert asked.text.rstrip().endswith("# EOF") is on
