"""observability/tracing.py with fakes: off it changes nothing; on, a record's spans, their
parents and links, the traceparent its outputs carry, the model call's attributes, no text;
the same spans for a handler's ``handle_batch`` (answered at once or by a model, by a fake,
by the cheap tier with tier 0, and through the engine); a missing extra is a one-line
start-up error; exemplars on the latency histograms.
(tests/integration/test_tracing.py runs the real thing against Jaeger.)"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import subprocess
import sys
from collections.abc import Sequence
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
    at_once: list[bool] = field(default_factory=list)

    async def deliver(
        self, tp: Any, tracker: Any, done: list[Done], *, at_once: bool = False
    ) -> None:
        self.delivered.extend(d.outputs for d in done)
        self.at_once.append(at_once)

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


def upstream(n: int) -> tuple[str, bytes]:
    """A traceparent of its own for the ``n``-th record of a batch (trace and span id ``n``)."""
    return ("traceparent", f"00-{n:032x}-{n:016x}-01".encode())


def offset_of(span: Any) -> int:
    """The offset of the record a ``process`` span is for."""
    offset = (span.attributes or {})["messaging.kafka.offset"]
    assert isinstance(offset, int)
    return offset


@dataclass
class BatchHandler:
    """A handler with ``handle_batch``, shaped like the cheap tier with tier 0: in one call per
    fetched batch, a record whose value is ``b"bad"`` is dead-lettered at once, another with an
    odd offset is answered at once (a local answer), and one with an even offset waits for the
    model and escalates. Every output's value is the record's offset. The engine never calls
    ``handle`` when ``handle_batch`` is there."""

    model: Any
    tier: str = "cheap"
    thresholds: FakeThresholds = field(default_factory=FakeThresholds)
    batches: list[list[int]] = field(default_factory=list)

    def handle(self, record: Any) -> list[Output]:
        raise AssertionError("handle_batch is there: handle must not be called")

    def handle_batch(self, records: Sequence[Any]) -> list[Any]:
        self.batches.append([r.offset for r in records])
        out: list[Any] = []
        for r in records:
            value, headers = str(r.offset).encode(), list(r.headers)
            if r.value == b"bad":
                out.append([Output("dlq", value, r.key, [*headers, ("x-escalator-reason", b"x")])])
            elif r.offset % 2:
                out.append([Output("results", value, r.key, headers)])
            else:
                out.append(self._ask(r))
        return out

    async def _ask(self, record: Any) -> list[Output]:
        await self.model.classify(TEXT)
        tracing.escalated("low_confidence")
        value = str(record.offset).encode()
        return [
            Output("escalations", value, record.key, list(record.headers)),
            Output("decisions", value, None),
        ]

    def should_pause(self) -> bool:
        return False


async def dispatched(
    handler: Any, delivery: Any, records: Sequence[Any], *, batch: bool = True
) -> tuple[list[int], dict[int, str | None]]:
    """What the worker does with one partition's fetched batch (engine/worker.py:
    ``_dispatch``, ``_answer``, ``_deliver_done``): ``handle_batch`` when the handler has it
    (and ``batch``), else ``handle`` per record; the records answered at once are delivered
    together by one task, with no context of their own; each coroutine runs in a task and is
    delivered with the context it ran in. Returns the offsets answered at once and, per
    offset, the exemplar trace id of its processing-time observation, read where the worker
    observes it."""
    handle_batch = getattr(handler, "handle_batch", None) if batch else None
    works = handle_batch(records) if handle_batch is not None else map(handler.handle, records)
    ready: list[Done] = []
    tasks: list[asyncio.Task[dict[int, str | None]]] = []

    async def answer(record: Any, work: Any) -> dict[int, str | None]:
        done = Done(record.offset, await work, 0.0, contextvars.copy_context())
        await delivery.deliver(None, None, [done])
        assert done.context is not None
        return {record.offset: done.context.run(tracing.trace_id)}

    async def deliver_ready() -> dict[int, str | None]:
        await delivery.deliver(None, None, ready)
        return {d.offset: tracing.trace_id() for d in ready}

    for record, work in zip(records, works, strict=True):
        if isinstance(work, list):
            ready.append(Done(record.offset, work, 0.0))
        else:
            tasks.append(asyncio.create_task(answer(record, work)))
    if ready:
        tasks.append(asyncio.create_task(deliver_ready()))
    exemplars: dict[int, str | None] = {}
    for task in tasks:
        exemplars |= await task
    return [d.offset for d in ready], exemplars


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


def test_the_traced_handler_has_handle_batch_exactly_when_its_handler_has_one() -> None:
    """The engine calls ``handle_batch`` when it is there (one call per partition of a fetched
    batch, no task for what is answered at once), else ``handle`` per record."""
    on, _ = traced()
    assert getattr(on.handler(FakeHandler(FakeModel()), group="g"), "handle_batch", None) is None
    batched = on.handler(BatchHandler(FakeModel()), group="g")
    assert callable(getattr(batched, "handle_batch", None))


async def test_a_batch_is_one_call_and_each_of_its_records_keeps_its_spans() -> None:
    """Records answered at once and a record that waits for the model, in one call: each has
    its process span, child of (and linked to) its own traceparent or a trace of its own,
    with its attributes; its send spans are children of it, and the chat span of the one
    that waits too. Answers given at once are delivered as they came, with no task, and
    reach the strategy as plain lists; their exemplar is the last sampled one's trace."""
    on, exporter = traced()
    delivery = FakeDelivery()
    inner = BatchHandler(on.model_client(FakeModel()))
    handler = on.handler(inner, group="cheap-group")
    records = [
        FakeRecord(offset=11, headers=[upstream(1)]),  # at once
        FakeRecord(offset=13, headers=[upstream(2)], value=b"bad"),  # at once, dead letter
        FakeRecord(offset=14, headers=[upstream(3)]),  # waits for the model
        FakeRecord(offset=15, headers=[]),  # at once, a trace of its own
    ]
    at_once, exemplars = await dispatched(handler, on.delivery(delivery), records)
    assert inner.batches == [[11, 13, 14, 15]], "one call for the batch"
    assert at_once == [11, 13, 15]
    spans = exporter.get_finished_spans()
    process = {offset_of(s): s for s in spans if s.name == "process requests"}
    assert sorted(process) == [11, 13, 14, 15] and len(spans) == 4 + 1 + 5  # chat, sends
    for offset, n in ((11, 1), (13, 2), (14, 3)):
        span = process[offset]
        assert span.parent is not None and span.parent.span_id == n, offset
        assert span.context.trace_id == n
        assert [link.context.span_id for link in span.links] == [n]
    assert process[15].parent is None and not process[15].links
    base = {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "requests",
        "messaging.destination.partition.id": "3",
        "messaging.consumer.group.name": "cheap-group",
        "escalator.tier": "cheap",
        "escalator.threshold_version": "cal-7",
    }
    outputs = {int(outs[0].value or b""): outs for outs in delivery.delivered}
    assert sorted(outputs) == [11, 13, 14, 15]
    for offset, span in process.items():
        record = next(r for r in records if r.offset == offset)
        expected = base | {
            "messaging.kafka.offset": offset,
            "messaging.message.body.size": len(record.value or b""),
        }
        if offset == 13:
            expected["escalator.dead_letter_reason"] = "x"
        if offset == 14:
            expected["escalator.escalation_reason"] = "low_confidence"
        assert dict(span.attributes or {}) == expected, offset
        error = StatusCode.ERROR if offset == 13 else StatusCode.UNSET
        assert span.status.status_code is error, offset
        # Each output's traceparent is the context of a send span, child of this span.
        children = [s for s in spans if s.parent and s.parent.span_id == span.context.span_id]
        sends = {s.context.span_id: s for s in children if s.name.startswith("send")}
        assert len(sends) == len(outputs[offset])
        for out in outputs[offset]:
            (parent,) = [v for k, v in out.headers if k == "traceparent" and v]
            send = sends[int(parent[36:52], 16)]
            ids = f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}-"
            assert parent.startswith(ids.encode())
            assert send.name == f"send {out.topic}" and send.kind is SpanKind.PRODUCER
    (chat,) = [s for s in spans if s.name.startswith("chat")]
    assert chat.parent is not None and chat.parent.span_id == process[14].context.span_id
    assert chat.context.trace_id == 3
    assert all(type(outs) is list for outs in delivery.delivered), "plain lists to the strategy"
    assert exemplars[14] == f"{3:032x}"
    last = format(process[15].context.trace_id, "032x")
    assert exemplars[11] == exemplars[13] == exemplars[15] == last
    for span in spans:
        for value in (span.attributes or {}).values():
            assert "Kumquat" not in str(value)


async def test_a_batch_the_sampler_leaves_out_costs_no_spans_and_stays_one_trace() -> None:
    """Sampled out, in a batch as alone: no span is exported, no exemplar names a trace, and
    each output carries its record's context flagged not sampled (the next tier leaves it
    out too); a record whose producer sampled it is traced, in the same batch."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    on = tracing._Tracing(provider)
    delivery = FakeDelivery()
    handler = on.handler(BatchHandler(on.model_client(FakeModel())), group="g")
    records = [FakeRecord(offset=o, headers=[]) for o in (1, 2, 3)]
    _, exemplars = await dispatched(
        handler, on.delivery(delivery), [*records, FakeRecord(offset=4)]
    )
    assert exemplars == {1: None, 2: None, 3: None, 4: UPSTREAM_TRACE}
    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {UPSTREAM_TRACE}
    assert len(spans) == 4  # offset 4's process, chat and two sends
    outputs = {int(outs[0].value or b""): outs for outs in delivery.delivered}
    for offset in (1, 2, 3):
        (parent,) = {
            v for out in outputs[offset] for k, v in out.headers if k == "traceparent" and v
        }
        assert len(parent) == 55 and int(parent[-2:], 16) & 1 == 0, parent  # the sampled bit


@dataclass
class HeldModel(FakeModel):
    """A model call that waits until ``answer`` is set."""

    answer: asyncio.Event = field(default_factory=asyncio.Event)

    async def classify(self, text: str, *, credit_token: str | None = None) -> Attempt:
        await self.answer.wait()
        return await super().classify(text, credit_token=credit_token)


async def test_a_batch_record_that_waits_ends_as_one_handled_alone_would() -> None:
    """A record of a batch whose call is cancelled (stopping, parked instead): its process
    and chat spans end failed, as with ``handle``. One the engine closes without starting
    (queued, then stopped or revoked) closes the handler's coroutine too, and no span of it
    is exported, as none is when a queued ``handle`` never starts."""
    on, exporter = traced()
    inner = BatchHandler(on.model_client(HeldModel()))
    handler = on.handler(inner, group="g")
    cancelled, closed = handler.handle_batch([FakeRecord(offset=2), FakeRecord(offset=4)])
    task = asyncio.create_task(cancelled)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    chat, process = exporter.get_finished_spans()
    assert chat.name.startswith("chat") and process.name == "process requests"
    assert chat.parent is not None and chat.parent.span_id == process.context.span_id
    for span in (chat, process):
        assert (span.attributes or {})["error.type"] == "CancelledError"
        assert span.status.status_code is StatusCode.ERROR
    assert (process.attributes or {})["messaging.kafka.offset"] == 2
    inner_work = closed._inner
    assert inspect.getcoroutinestate(inner_work) == inspect.CORO_CREATED
    closed.close()
    assert inspect.getcoroutinestate(inner_work) == inspect.CORO_CLOSED
    assert len(exporter.get_finished_spans()) == 2


def _shape(spans: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Each span by what it is and where it hangs in its trace (not by its ids, which are
    random): name, kind, parent, links, status, attributes."""
    by_id = {s.context.span_id: s for s in spans}

    def label(span_id: int) -> str:
        span = by_id.get(span_id)
        if span is None:
            return f"upstream {span_id:016x}"
        if span.name.startswith("process"):
            return f"process @{(span.attributes or {})['messaging.kafka.offset']}"
        return f"{span.name} under {label(span.parent.span_id)}"

    return sorted(
        (
            label(s.context.span_id),
            s.kind.name,
            label(s.parent.span_id) if s.parent is not None else None,
            [label(link.context.span_id) for link in s.links],
            s.status.status_code.name,
            sorted((k, repr(v)) for k, v in (s.attributes or {}).items()),
        )
        for s in spans
    )


async def test_the_cheap_tier_s_batch_spans_are_those_it_makes_one_record_at_a_time() -> None:
    """The cheap tier with tier 0 (its ``handle_batch``), traced: a batch of a tier-0 answer,
    bad input, a request the model answers (and escalates) and a tier-0 answer without a
    traceparent makes, span for span, what handling each record alone makes: the same
    names, kinds, parents, links, statuses and attributes; tier 0 is asked once."""
    from escalator.tiers.handlers import CheapHandler
    from tests.unit.tiers.test_handlers import FakeModel as TierModel
    from tests.unit.tiers.test_handlers import FakeRecord as TierRecord
    from tests.unit.tiers.test_handlers import FakeTier0, caller, handler, ok, request

    shapes = []
    for batch in (False, True):
        on, exporter = traced()
        model = TierModel(lambda _: ok(confidence=0.4))
        tier0 = FakeTier0({"hello friend": ("safe", 0.97), "ask the model": ("safe", 0.5)})
        cheap = handler(CheapHandler, model, caller=caller(on.model_client(model)), tier0=tier0)
        records = [
            TierRecord(request("hello friend"), offset=0, headers=[upstream(1)]),
            TierRecord(b"not json", offset=1, headers=[upstream(2)]),
            TierRecord(request("ask the model"), offset=2, headers=[upstream(3)]),
            TierRecord(request("hello friend"), offset=3, headers=[]),
        ]
        delivery = FakeDelivery()
        await dispatched(on.handler(cheap, group="g"), on.delivery(delivery), records, batch=batch)
        assert len(tier0.asked) == (1 if batch else 3) and model.calls == 1
        assert sorted(out.topic for outputs in delivery.delivered for out in outputs) == [
            "dead", "decisions", "decisions", "decisions", "escalations", "results", "results"
        ]  # fmt: skip
        spans = exporter.get_finished_spans()
        assert sum(s.name.startswith("process") for s in spans) == 4
        for span in spans:
            for value in (span.attributes or {}).values():
                assert "hello friend" not in str(value) and "ask the model" not in str(value)
        shapes.append(_shape(spans))
    alone, batched = shapes
    assert batched == alone


async def test_through_the_engine_each_record_of_a_batch_has_one_trace_of_its_spans() -> None:
    """The worker (engine/worker.py) with a traced handler that has ``handle_batch``: it gets
    each fetched batch in one call, and every record ends with one process span whose
    children are its own (a chat span when it waited for the model, a send span per output),
    all in a trace of its own (these records carry no traceparent)."""
    from tests.unit.engine.test_delivery import Broker, FakeConsumer, make_delivery, until
    from tests.unit.engine.test_worker import worker

    on, exporter = traced()
    broker = Broker()
    strategy, _ = make_delivery("at_least_once", broker)
    inner = BatchHandler(on.model_client(FakeModel()))
    consumer = FakeConsumer(broker, 40)
    w = worker(consumer, on.delivery(strategy), on.handler(inner, group="g"), Metrics())
    task = asyncio.create_task(w.run())
    await until(lambda: broker.committed >= 40)
    w.stop()
    await asyncio.wait_for(task, 30)
    assert broker.committed == 40
    assert sorted(o for b in inner.batches for o in b) == list(range(40))
    assert max(len(b) for b in inner.batches) > 1, "whole batches, in one call"
    traces: dict[int, list[Any]] = {}
    for span in exporter.get_finished_spans():
        traces.setdefault(span.context.trace_id, []).append(span)
    assert len(traces) == 40
    offsets = []
    for spans in traces.values():
        (process,) = [s for s in spans if s.name == "process requests"]
        offset = offset_of(process)
        offsets.append(offset)
        children = sorted(s.name for s in spans if s is not process)
        if offset % 2:
            assert children == ["send results"], offset
        else:
            assert children == ["chat claude-haiku-5-5", "send decisions", "send escalations"]
        for span in spans:
            if span is not process:
                assert span.parent is not None
                assert span.parent.span_id == process.context.span_id, (offset, span.name)
    assert sorted(offsets) == list(range(40))


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


async def test_the_traced_delivery_passes_on_whether_records_were_answered_at_once() -> None:
    """The strategy sends records answered at once as record batches: the send spans'
    wrapper must not hide that from it."""
    on, _ = traced()
    inner = FakeDelivery()
    delivery = on.delivery(inner)
    await delivery.deliver(None, None, [Done(1, [Output("results", b"{}", None)], 0.0)])
    await delivery.deliver(
        None, None, [Done(2, [Output("results", b"{}", None)], 0.0)], at_once=True
    )
    assert inner.at_once == [False, True]
