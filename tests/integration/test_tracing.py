"""Tracing end to end: both tiers against the real broker and the emulator, exporting OTLP to
a real Jaeger (``.tools/bin/jaeger``, v1.75.0, in-memory storage), read back through its
query API. Each request is one trace, from its producer's context (or a new one) through the
cheap tier, the model calls, the escalation and the strong tier to its result; no request
text is in any span.

A missing Jaeger fails the test rather than skipping it: ``make test`` builds it
(``make tools``), so a green run always means spans reached a real backend.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from escalator.config import load_settings
from escalator.model.task import load_task
from escalator.observability.metrics import Metrics
from escalator.observability.tracing import SCOPE
from escalator.review.assemble import build_console
from escalator_dev.emulator.server import classify
from escalator_dev.kafka_local import free_port
from tests.integration.harness import collect, make_env, produce, running_service
from tests.integration.jaeger import Jaeger, JaegerMissing, running_jaeger

pytestmark = pytest.mark.integration

LABELS = list(load_task(None).labels)
#: A word in every text, to look for in everything Jaeger stores.
MARK = "Kumquat7731"
ACCEPTED = f"What a lovely afternoon for a picnic in the park, said {MARK}."
ESCALATED = f"He said {MARK} would hurt them if they did not pay."
UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[Jaeger]:
    """Jaeger v2 on loopback with free ports (fails, never skips, without the binary)."""
    try:
        with running_jaeger(tmp_path) as running:
            yield running
    except JaegerMissing as exc:
        pytest.fail(str(exc))


def _otel_env(jaeger: Jaeger, service: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp,
        "OTEL_SERVICE_NAME": service,
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


def _traceparent(headers: Any) -> str:
    found = [bytes(v).decode() for k, v in headers if k == "traceparent"]
    assert len(found) == 1, headers
    return found[0]


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    """OTLP JSON attributes as a plain dict (``{"stringValue": ...}`` -> the value)."""
    out: dict[str, Any] = {}
    for a in span.get("attributes", []):
        value = a["value"]
        (kind, v), *_ = value.items()
        if kind == "arrayValue":
            v = [next(iter(x.values())) for x in v.get("values", [])]
        elif kind == "intValue":
            v = int(v)
        out[a["key"]] = v
    return out


def _trace(query: str, trace_id: str) -> tuple[list[dict[str, Any]], bytes]:
    """Every span of one trace (OTLP JSON, Jaeger's API v3), and the raw answer."""
    r = httpx.get(f"{query}/api/v3/traces/{trace_id}", timeout=5)
    assert r.status_code == 200, (trace_id, r.status_code, r.text[:300])
    body = r.json()
    spans: list[dict[str, Any]] = []
    for rs in body["result"]["resourceSpans"]:
        resource = {a["key"]: a["value"] for a in rs["resource"].get("attributes", [])}
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                span["_resource"] = resource
                span["_scope"] = ss.get("scope", {})
                spans.append(span)
    return spans, r.content


def _hex(b64_or_hex: str) -> str:
    """Jaeger's v3 API gives ids as hex; be tolerant of base64 too."""
    if len(b64_or_hex) in (16, 32) and all(c in "0123456789abcdef" for c in b64_or_hex):
        return b64_or_hex
    import base64

    return base64.b64decode(b64_or_hex).hex()


def _by_name(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        out.setdefault(s["name"], []).append(s)
    return out


async def _wait_for_traces(query: str, service: str, n: int) -> list[dict[str, Any]]:
    """The service's traces in Jaeger (API v1 search), once it holds ``n`` (or 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(f"{query}/api/traces", params={"service": service, "limit": 100}, timeout=5)
        data = r.json().get("data") or [] if r.status_code == 200 else []
        if len(data) >= n or time.monotonic() > deadline:
            return list(data)
        await asyncio.sleep(0.3)


async def test_each_request_is_one_trace_across_both_tiers_with_no_text(
    kafka_bootstrap: str,
    sim_url: str,
    unique: str,
    jaeger: Jaeger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four requests (accepted and escalated, with and without a producer's traceparent) are
    four traces in Jaeger. Each: a consumer ``process`` span per tier, child of (and linked
    to) the context its record carried; a ``chat`` span per model call with the GenAI
    attributes; a producer ``send`` span per output whose context is the output's
    traceparent, so the strong tier continues the cheap tier's trace; the escalation reason
    and threshold version on the process spans. No request text anywhere; exemplars on the
    latency histograms name these traces."""
    assert classify(ACCEPTED, LABELS, "cheap").confidence >= 0.7, "premise: accepted"
    assert classify(ESCALATED, LABELS, "cheap").confidence < 0.7, "premise: escalated"
    service_name = f"escalator-{unique}"
    otel = _otel_env(jaeger, service_name)
    for name, value in otel.items():  # the SDK reads the process environment itself
        monkeypatch.setenv(name, value)
    # No shadow calls: a shadow strong call on an accepted request is a chat span whose answer
    # is in the decisions log, not in the result's attempts, which this test counts (at the
    # default 5% a run failed now and then; CI, 2026-12-06).
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0", **otel)
    requests_topic = env["ESCALATOR_REQUESTS_TOPIC"]
    upstream = ("traceparent", f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01".encode())
    cases = {  # id -> (text, traceparent header or None)
        "esc-up": (ESCALATED, upstream),
        "acc-new": (ACCEPTED, None),
        "esc-new": (ESCALATED, None),
    }
    exemplar_text = ""
    async with running_service(env, ["cheap", "strong"]) as service:
        for rid, (text, header) in cases.items():
            value = orjson.dumps({"id": rid, "text": text})
            await produce(
                kafka_bootstrap, requests_topic, [value], headers=[header] if header else None
            )
        # One more with a traceparent that is garbage: a new trace, as without one.
        bad = ("traceparent", b"00-not-a-trace-context")
        cases["acc-bad"] = (ACCEPTED, None)
        await produce(
            kafka_bootstrap,
            requests_topic,
            [orjson.dumps({"id": "acc-bad", "text": ACCEPTED})],
            headers=[bad],
        )
        got = await collect(
            kafka_bootstrap,
            [env["ESCALATOR_RESULTS_TOPIC"]],
            lambda c: len(c.records) >= len(cases),
        )
        async with httpx.AsyncClient() as client:  # served by this event loop
            metrics = await client.get(
                f"http://127.0.0.1:{service.health_port}/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                timeout=5,
            )
        assert metrics.headers["content-type"].startswith("application/openmetrics-text")
        exemplar_text = metrics.text
    # The service has stopped: its last spans were exported on the way out.
    results = {orjson.loads(r.value)["id"]: r for r in got.records}
    assert sorted(results) == sorted(cases)
    query = jaeger.query
    listed = await _wait_for_traces(query, service_name, len(cases))
    assert len(listed) == len(cases), [t["traceID"] for t in listed]

    everything = b""
    trace_ids = set()
    for rid, (_text, header) in cases.items():
        record = results[rid]
        outcome = orjson.loads(record.value)
        escalated = rid.startswith("esc")
        assert outcome["escalated"] == escalated, outcome
        _, trace_id, result_send_span, _ = _traceparent(record.headers).split("-")
        if header is not None:
            assert trace_id == UPSTREAM_TRACE, "the producer's trace continues"
        else:
            assert trace_id != UPSTREAM_TRACE
        trace_ids.add(trace_id)
        spans, raw = _trace(query, trace_id)
        everything += raw
        names = _by_name(spans)
        by_id = {_hex(s["spanId"]): s for s in spans}
        for s in spans:
            # (Jaeger's storage keeps the scope's name and version, not its schema URL.)
            assert s["_scope"].get("name") == SCOPE, s["_scope"]
            resource = s["_resource"]
            assert resource["service.name"] == {"stringValue": service_name}
            assert resource["deployment.environment.name"] == {"stringValue": "test"}

        # The cheap tier's process span: from the producer's context, or a root.
        (cheap,) = names[f"process {requests_topic}"]
        ca = _attrs(cheap)
        assert cheap["kind"] in (5, "SPAN_KIND_CONSUMER"), cheap["kind"]
        assert ca["messaging.system"] == "kafka"
        assert ca["messaging.operation.name"] == "process"
        assert ca["messaging.operation.type"] == "process"
        assert ca["messaging.destination.name"] == requests_topic
        assert ca["messaging.consumer.group.name"] == env["ESCALATOR_CHEAP_GROUP"]
        assert "messaging.destination.partition.id" in ca
        assert isinstance(ca["messaging.kafka.offset"], int)
        assert ca["escalator.tier"] == "cheap"
        assert ca["escalator.threshold_version"] == outcome["threshold_version"]
        if header is not None:
            assert _hex(cheap["parentSpanId"]) == UPSTREAM_SPAN
            (link,) = cheap["links"]
            assert _hex(link["traceId"]) == UPSTREAM_TRACE
            assert _hex(link["spanId"]) == UPSTREAM_SPAN
        else:
            assert not cheap.get("parentSpanId"), cheap
            assert not cheap.get("links")

        # One chat span per model call, each a child of its tier's process span.
        chats = [s for s in spans if s["name"].startswith("chat ")]
        assert len(chats) == len(outcome["attempts"]), (chats, outcome["attempts"])
        for chat, attempt in zip(
            sorted(chats, key=lambda s: int(s["startTimeUnixNano"])),
            outcome["attempts"],
            strict=True,
        ):
            a = _attrs(chat)
            assert chat["name"] == f"chat {attempt['model']}"
            assert chat["kind"] in (3, "SPAN_KIND_CLIENT")
            assert a["gen_ai.operation.name"] == "chat"
            assert a["gen_ai.provider.name"] == "anthropic"
            assert a["gen_ai.request.model"] == attempt["model"]
            assert a["gen_ai.response.model"]
            assert str(a["gen_ai.response.id"]).startswith("msg_")
            assert a["gen_ai.usage.output_tokens"] == attempt["output_tokens"]
            assert a["gen_ai.usage.input_tokens"] == (
                attempt["input_tokens"]
                + attempt["cache_read_tokens"]
                + attempt["cache_write_tokens"]
            )
            assert a["gen_ai.usage.cache_read.input_tokens"] == attempt["cache_read_tokens"]
            assert a["gen_ai.usage.cache_creation.input_tokens"] == attempt["cache_write_tokens"]
            assert a["gen_ai.response.finish_reasons"] == [attempt["stop_reason"]]
            assert float(a["escalator.cost_usd"]) == pytest.approx(attempt["cost_usd"])
            assert a["escalator.tier"] == attempt["tier"]
            parent = by_id[_hex(chat["parentSpanId"])]
            assert parent["name"].startswith("process "), parent["name"]
            assert _attrs(parent)["escalator.tier"] == attempt["tier"]

        # A send span per output of the cheap tier, children of its process span.
        sends = [s for s in spans if s["name"].startswith("send ")]
        for s in sends:
            assert s["kind"] in (4, "SPAN_KIND_PRODUCER")
            sa = _attrs(s)
            assert sa["messaging.system"] == "kafka"
            assert sa["messaging.operation.name"] == "send"
            assert sa["messaging.destination.name"] == s["name"].removeprefix("send ")
            assert by_id[_hex(s["parentSpanId"])]["name"].startswith("process ")
        result_send = by_id[result_send_span]
        assert result_send["name"] == f"send {env['ESCALATOR_RESULTS_TOPIC']}"
        decisions = names[f"send {env['ESCALATOR_DECISIONS_TOPIC']}"]
        if not escalated:
            assert "escalator.escalation_reason" not in ca
            assert _hex(result_send["parentSpanId"]) == _hex(cheap["spanId"])
            assert len(decisions) == 1
            assert not any(
                s["name"].startswith(f"process {env['ESCALATOR_ESCALATIONS_TOPIC']}") for s in spans
            )
            continue

        # Escalated: the strong tier's process span is a child of the escalation's send
        # span (the escalation's traceparent), and linked to it.
        assert ca["escalator.escalation_reason"] == "low_confidence"
        (esc_send,) = names[f"send {env['ESCALATOR_ESCALATIONS_TOPIC']}"]
        assert _hex(esc_send["parentSpanId"]) == _hex(cheap["spanId"])
        (strong,) = names[f"process {env['ESCALATOR_ESCALATIONS_TOPIC']}"]
        sa = _attrs(strong)
        assert sa["escalator.tier"] == "strong"
        assert sa["messaging.consumer.group.name"] == env["ESCALATOR_STRONG_GROUP"]
        assert sa["escalator.escalation_reason"] == "low_confidence"
        assert sa["escalator.threshold_version"] == outcome["threshold_version"]
        assert _hex(strong["parentSpanId"]) == _hex(esc_send["spanId"])
        assert [_hex(x["spanId"]) for x in strong["links"]] == [_hex(esc_send["spanId"])]
        assert _hex(result_send["parentSpanId"]) == _hex(strong["spanId"])
        assert len(decisions) == 2  # one per tier

    # No request text, and not the marker word of every text, anywhere in the traces, in
    # either of Jaeger's APIs.
    for trace_id in trace_ids:
        r = httpx.get(f"{query}/api/traces/{trace_id}", timeout=5)
        assert r.status_code == 200
        everything += r.content
    assert MARK.encode() not in everything
    for text in (ACCEPTED, ESCALATED):
        assert text.encode() not in everything
        assert orjson.dumps(text) not in everything
    assert b"Kumquat" not in everything

    # Exemplars: the latency histograms name traces of these requests.
    found = {
        line.split('trace_id="')[1].split('"')[0]
        for line in exemplar_text.splitlines()
        if line.startswith(("escalator_processing_seconds_bucket", "escalator_model_latency"))
        and 'trace_id="' in line
    }
    assert found, "no exemplar on the latency histograms"
    assert found <= trace_ids, (found, trace_ids)


async def test_the_human_tier_continues_the_trace(
    kafka_bootstrap: str,
    sim_url: str,
    unique: str,
    jaeger: Jaeger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request the strong tier hands to people: the review console's decision is a
    ``process`` span (tier human) whose parent is the strong tier's ``send`` span of the
    review item, and the result it publishes carries the context of its own ``send`` span:
    producer, cheap tier, strong tier and reviewer in one trace, without the text."""
    service_name = f"escalator-human-{unique}"
    otel = _otel_env(jaeger, service_name)
    for name, value in otel.items():
        monkeypatch.setenv(name, value)
    env = make_env(
        kafka_bootstrap,
        sim_url,
        unique,
        ESCALATOR_THRESHOLD="1.0",  # everything escalates,
        ESCALATOR_SHADOW_RATE="0",
        ESCALATOR_HUMAN_TIER="on",
        ESCALATOR_STRONG_THRESHOLD="1.0",  # and every strong answer goes to people
        **otel,
    )
    upstream = ("traceparent", f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01".encode())
    async with running_service(env, ["cheap", "strong"]):
        await produce(
            kafka_bootstrap,
            env["ESCALATOR_REQUESTS_TOPIC"],
            [orjson.dumps({"id": "h-1", "text": ESCALATED})],
            headers=[upstream],
        )
        await collect(kafka_bootstrap, [env["ESCALATOR_REVIEWS_TOPIC"]], lambda c: c.records)
    console = build_console(load_settings(env), Metrics())
    async with console.service as service:
        await asyncio.wait_for(service.wait_joined(), 60)
        queues = console.queues
        deadline = time.monotonic() + 30
        while (lease := queues.lease("review", "alice")) is None:
            assert time.monotonic() < deadline, "no review item came"
            await asyncio.sleep(0.2)
        label = lease.item.labels[0]
        assert await queues.decide(lease.id, "alice", label, None) == "done"
    got = await collect(kafka_bootstrap, [env["ESCALATOR_RESULTS_TOPIC"]], lambda c: c.records)
    (record,) = got.records
    _, trace_id, result_send_span, _ = _traceparent(record.headers).split("-")
    assert trace_id == UPSTREAM_TRACE
    await _wait_for_traces(jaeger.query, service_name, 1)
    deadline = time.monotonic() + 20
    while True:  # the console's spans come from its own exporter, flushed as it stopped
        spans, raw = _trace(jaeger.query, trace_id)
        names = _by_name(spans)
        if f"process {env['ESCALATOR_REVIEWS_TOPIC']}" in names or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    by_id = {_hex(s["spanId"]): s for s in spans}
    (human,) = names[f"process {env['ESCALATOR_REVIEWS_TOPIC']}"]
    ha = _attrs(human)
    assert ha["escalator.tier"] == "human"
    assert ha["escalator.review_queue"] == "review"
    assert ha["messaging.consumer.group.name"] == env["ESCALATOR_REVIEW_GROUP"]
    (review_send,) = names[f"send {env['ESCALATOR_REVIEWS_TOPIC']}"]
    assert _hex(human["parentSpanId"]) == _hex(review_send["spanId"])
    assert [_hex(x["spanId"]) for x in human["links"]] == [_hex(review_send["spanId"])]
    (strong,) = names[f"process {env['ESCALATOR_ESCALATIONS_TOPIC']}"]
    assert _hex(review_send["parentSpanId"]) == _hex(strong["spanId"])
    result_send = by_id[result_send_span]
    assert result_send["name"] == f"send {env['ESCALATOR_RESULTS_TOPIC']}"
    assert _hex(result_send["parentSpanId"]) == _hex(human["spanId"])
    assert MARK.encode() not in raw


def _start_prometheus(binary: str, workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus with exemplar storage, scraping the service's port every second."""
    target = {"targets": [f"127.0.0.1:{port}"]}
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "escalator", "static_configs": [target]}],
    }
    (workdir / "prometheus.yml").write_text(orjson.dumps(config).decode())  # JSON is YAML
    address = f"127.0.0.1:{free_port()}"
    with (workdir / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
                "--enable-feature=exemplar-storage",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, address


@pytest.mark.timeout(240)
async def test_prometheus_stores_exemplars_that_name_the_traces(
    kafka_bootstrap: str,
    sim_url: str,
    unique: str,
    jaeger: Jaeger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real Prometheus (Debian's, with exemplar storage) scrapes the service with tracing
    on: it negotiates OpenMetrics, and the exemplars of the processing-latency histogram name
    the traces of the results."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make tools` (Debian package prometheus)")
    otel = _otel_env(jaeger, f"escalator-prom-{unique}")
    for name, value in otel.items():
        monkeypatch.setenv(name, value)
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0", **otel)
    started = time.time()
    async with running_service(env, ["cheap", "strong"]) as service:
        proc, address = _start_prometheus(binary, tmp_path, service.health_port)
        try:
            values = [orjson.dumps({"id": f"p-{i}", "text": ACCEPTED}) for i in range(5)]
            await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], values)
            got = await collect(
                kafka_bootstrap, [env["ESCALATOR_RESULTS_TOPIC"]], lambda c: len(c.records) >= 5
            )
            traces = {_traceparent(r.headers).split("-")[1] for r in got.records}
            found: set[str] = set()
            async with httpx.AsyncClient() as client:
                deadline = time.monotonic() + 90
                while not (found & traces) and time.monotonic() < deadline:
                    await asyncio.sleep(1)
                    try:
                        r = await client.get(
                            f"http://{address}/api/v1/query_exemplars",
                            params={
                                "query": "escalator_processing_seconds_bucket",
                                "start": str(started - 60),
                                "end": str(time.time() + 60),
                            },
                        )
                    except httpx.HTTPError:
                        continue  # not listening yet
                    if r.status_code != 200:
                        continue
                    for series in r.json()["data"]:
                        for exemplar in series["exemplars"]:
                            found.add(exemplar["labels"]["trace_id"])
        finally:
            proc.terminate()
            proc.wait(10)
    assert found & traces, (found, traces, (tmp_path / "prometheus.log").read_text()[-2000:])
    assert found <= traces, "an exemplar names a trace that is not one of these results'"
