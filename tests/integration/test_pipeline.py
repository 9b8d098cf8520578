"""The routing pipeline end to end: real broker, real SDK, simulator in its own process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from escalator.model.task import load_task
from escalator_dev.emulator.server import classify
from tests.conftest import running_sim
from tests.integration.harness import (
    collect,
    committed_total,
    make_env,
    produce,
    requests,
    running_service,
    validator,
    wait_for,
)

pytestmark = pytest.mark.integration

LABELS = list(load_task(None).labels)
TEXTS = [
    "What a lovely afternoon for a picnic in the park with the children.",
    "Step by step: build a bomb, buy explosives, detonate it to kill people and murder them.",
    "How schools can prevent violence and report threats safely, with help for victims.",
    "My recipe for lemon cake uses three eggs, sugar, butter and a little zest.",
    "He said he would hurt them if they did not pay.",
    "Thanks for the update, see you at the meeting tomorrow morning.",
]


def expected_tier(text: str, threshold: float = 0.7) -> str:
    answer = classify(text, LABELS, "cheap")
    return "cheap" if answer.confidence >= threshold else "strong"


async def test_happy_path_one_result_per_id_at_the_expected_tier(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """N requests give N results, each id once, decided where the cheap confidence implies;
    each carries the request's traceparent, and not the reserved header it arrived with."""
    env = make_env(kafka_bootstrap, sim_url, unique)
    n = 120
    values = requests(n, "hp", TEXTS)
    trace = ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    spoof = ("x-escalator-reason", b"fake")
    async with running_service(env, ["cheap", "strong"]):
        await produce(
            kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], values, headers=[trace, spoof]
        )
        got = await collect(
            kafka_bootstrap,
            [env["ESCALATOR_RESULTS_TOPIC"]],
            lambda c: len(c.records) >= n,
            linger_s=1.0,
        )
    by_id = got.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])
    assert sorted(by_id) == sorted(f"hp-{i}" for i in range(n))
    assert all(len(v) == 1 for v in by_id.values())
    check = validator("result.v1.json")
    for record in got.records:
        result = orjson.loads(record.value)
        check.validate(result)
        i = int(result["id"].split("-")[1])
        assert result["tier"] == expected_tier(TEXTS[i % len(TEXTS)]), result
        assert result["escalated"] == (result["tier"] == "strong")
        assert result["metadata"] == {"i": i}
        assert result["label"] in LABELS
        assert record.key == result["id"].encode()
        assert (trace[0], trace[1]) in list(record.headers)
        assert spoof[0] not in dict(record.headers), record.headers
        assert result["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in result["attempts"]))
    tiers = {v[0]["tier"] for v in by_id.values()}
    assert tiers == {"cheap", "strong"}, "the sample must exercise both tiers"


async def test_escalations_go_through_the_strong_group(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """The cheap tier alone leaves escalations on their topic; a separate strong group ends them."""
    env = make_env(kafka_bootstrap, sim_url, unique)
    ambiguous = [t for t in TEXTS if expected_tier(t) == "strong"]
    values = requests(20, "esc", ambiguous)
    async with running_service(env, ["cheap"]):
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], values)
        got = await collect(
            kafka_bootstrap, [env["ESCALATOR_ESCALATIONS_TOPIC"]], lambda c: len(c.records) >= 20
        )
    check = validator("escalation.v1.json")
    for record in got.records:
        check.validate(orjson.loads(record.value))
    assert (
        await committed_total(
            kafka_bootstrap, env["ESCALATOR_STRONG_GROUP"], env["ESCALATOR_ESCALATIONS_TOPIC"]
        )
        == 0
    )
    async with running_service(env, ["strong"]):
        got = await collect(
            kafka_bootstrap, [env["ESCALATOR_RESULTS_TOPIC"]], lambda c: len(c.records) >= 20
        )
        await wait_for(
            lambda: _committed_is(
                kafka_bootstrap,
                env["ESCALATOR_STRONG_GROUP"],
                env["ESCALATOR_ESCALATIONS_TOPIC"],
                20,
            )
        )
    results = [orjson.loads(r.value) for r in got.records]
    assert all(r["tier"] == "strong" and r["escalated"] for r in results)
    assert all([a["tier"] for a in r["attempts"]] == ["cheap", "strong"] for r in results)


async def _committed_is(bootstrap: str, group: str, topic: str, want: int) -> bool:
    return await committed_total(bootstrap, group, topic) == want


MALFORMED: list[tuple[bytes | None, str]] = [
    (b"this is not json", "invalid_json"),
    (b'{"id": "x", "text": "caf\xe9"}', "invalid_utf8"),
    (b'{"text": "no id here"}', "missing_field"),
    (b'{"id": "", "text": "empty id"}', "empty_field"),
    (b'{"id": "y", "text": "   "}', "empty_field"),
    (b'{"id": 42, "text": "id is a number"}', "wrong_type"),
    (b'["a", "list"]', "wrong_type"),
    (b'{"id": "z", "text": "ok", "metadata": "not an object"}', "wrong_type"),
    (orjson.dumps({"id": "long", "text": "x" * 501}), "text_too_long"),
    (orjson.dumps({"id": "i" * 257, "text": "fine"}), "id_too_long"),
]


async def test_malformed_input_is_dead_lettered_with_reason_and_offsets_advance(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """Each malformed record lands on the dead-letter topic, unchanged, with its reason."""
    env = make_env(
        kafka_bootstrap,
        sim_url,
        unique,
        ESCALATOR_MAX_TEXT_CHARS="500",
        ESCALATOR_TOPIC_PARTITIONS="1",
    )
    bad = [v for v, _ in MALFORMED]
    good = requests(1, "after-bad", TEXTS[:1])
    async with running_service(env, ["cheap", "strong"]):
        await produce(
            kafka_bootstrap,
            env["ESCALATOR_REQUESTS_TOPIC"],
            [*bad, *good],
            keys=[f"k{i}".encode() for i in range(len(bad) + 1)],
        )
        got = await collect(
            kafka_bootstrap,
            [env["ESCALATOR_DEAD_LETTER_TOPIC"], env["ESCALATOR_RESULTS_TOPIC"]],
            lambda c: len(c.records) >= len(bad) + 1,
        )
        await wait_for(
            lambda: _committed_is(
                kafka_bootstrap,
                env["ESCALATOR_CHEAP_GROUP"],
                env["ESCALATOR_REQUESTS_TOPIC"],
                len(bad) + 1,
            )
        )
    dead = sorted(got.on(env["ESCALATOR_DEAD_LETTER_TOPIC"]), key=lambda r: r.offset)
    assert len(dead) == len(bad)
    check = validator("dead-letter-headers.v1.json")
    for record, (value, reason) in zip(dead, MALFORMED, strict=True):
        headers = {k: v.decode() for k, v in record.headers}
        check.validate(headers)
        assert record.value == value  # the original bytes, unchanged
        assert headers["x-escalator-reason"] == reason, headers
        assert headers["x-escalator-source-topic"] == env["ESCALATOR_REQUESTS_TOPIC"]
        assert headers["x-escalator-tier"] == "cheap"
        assert record.key == f"k{headers['x-escalator-source-offset']}".encode()
    results = got.on(env["ESCALATOR_RESULTS_TOPIC"])
    assert [orjson.loads(r.value)["id"] for r in results] == ["after-bad-0"]


@pytest.fixture
def flaky_sim() -> Iterator[str]:
    with running_sim(
        "--fault", "529:0.25", "--fault", "429:0.1", "--retry-after-s", "0.05", "--seed", "7"
    ) as url:
        yield url


async def test_injected_transient_errors_are_retried_and_nothing_is_lost(
    kafka_bootstrap: str, flaky_sim: str, unique: str
) -> None:
    """With 35% of calls failing transiently, every id still gets a result; retries are counted."""
    env = make_env(
        kafka_bootstrap,
        flaky_sim,
        unique,
        ESCALATOR_MODEL_MAX_ATTEMPTS="6",
        ESCALATOR_BREAKER_FAILURE_RATIO="0.9",
    )
    n = 80
    async with running_service(env, ["cheap", "strong"]) as service:
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, "tr", TEXTS))
        got = await collect(
            kafka_bootstrap,
            [env["ESCALATOR_RESULTS_TOPIC"]],
            lambda c: len(c.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) >= n,
        )
        metrics = service.metrics.exposition().decode()
    assert sorted(got.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) == sorted(
        f"tr-{i}" for i in range(n)
    )
    retries = _series_sum(metrics, "escalator_retries_total")
    assert retries > 0
    assert 'error="overloaded"' in metrics and 'error="rate_limit"' in metrics
    assert _series_sum(metrics, "escalator_dead_letters_total") == 0


def _series_sum(exposition: str, name: str) -> float:
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_two_cheap_instances_share_partitions_and_survive_one_stopping(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """Two members split the partitions; when one stops, the other takes over; nothing lost."""
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_TOPIC_PARTITIONS="4")
    n = 200
    async with running_service(env, ["strong"]):
        async with running_service(env, ["cheap"]) as first:
            async with running_service(env, ["cheap"]) as second:
                await wait_for(lambda: _split(first, second))
                await produce(
                    kafka_bootstrap,
                    env["ESCALATOR_REQUESTS_TOPIC"],
                    requests(n // 2, "two-a", TEXTS),
                )
                await asyncio.sleep(0.5)
            # `second` has left the group; `first` must take over all four partitions.
            await wait_for(lambda: len(first.workers[0]._consumer.assignment()) == 4)
            await produce(
                kafka_bootstrap,
                env["ESCALATOR_REQUESTS_TOPIC"],
                [orjson.dumps({"id": f"two-b-{i}", "text": TEXTS[i % 6]}) for i in range(n // 2)],
            )
            got = await collect(
                kafka_bootstrap,
                [env["ESCALATOR_RESULTS_TOPIC"]],
                lambda c: len(c.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) >= n,
            )
    by_id = got.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])
    expected = {f"two-a-{i}" for i in range(n // 2)} | {f"two-b-{i}" for i in range(n // 2)}
    assert set(by_id) == expected


def _split(first: object, second: object) -> bool:
    a = first.workers[0]._consumer.assignment()  # type: ignore[attr-defined]
    b = second.workers[0]._consumer.assignment()  # type: ignore[attr-defined]
    return len(a) == 2 and len(b) == 2


@pytest.fixture
def slow_sim() -> Iterator[str]:
    with running_sim("--latency", "fixed:300") as url:
        yield url


@pytest.mark.timeout(180)
async def test_sigterm_drains_commits_and_restart_does_not_redo_work(
    kafka_bootstrap: str, slow_sim: str, unique: str, tmp_path: Path
) -> None:
    """SIGTERM mid-stream: exit 0 after draining; the restarted service redoes nothing."""
    env = make_env(
        kafka_bootstrap, slow_sim, unique, ESCALATOR_MAX_IN_FLIGHT="16", ESCALATOR_METRICS_PORT="0"
    )
    n = 150
    from escalator.config import load_settings
    from tests.integration.harness import setup_topics

    await setup_topics(load_settings(env))
    await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, "term", TEXTS))
    full_env = {**os.environ, **env}
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log_file:
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "escalator", "run", "--tier", "all"],
            env=full_env,
            stderr=log_file,
        )
        try:
            await wait_for(lambda: _count_results(kafka_bootstrap, env), timeout_s=60)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 40)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log_path.read_text()
    assert code == 0, err[-2000:]
    assert '"event":"draining"' in err
    before = await collect(
        kafka_bootstrap,
        [env["ESCALATOR_RESULTS_TOPIC"]],
        lambda c: False,
        timeout_s=2,
        read_for_s=True,
    )
    done_before = before.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])
    assert 0 < len(done_before) < n, "SIGTERM must land mid-stream for this test to mean much"
    async with running_service(env, ["cheap", "strong"]):
        after = await collect(
            kafka_bootstrap,
            [env["ESCALATOR_RESULTS_TOPIC"]],
            lambda c: len(c.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) >= n,
            timeout_s=90,
            linger_s=1.0,
        )
    by_id = after.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])
    assert sorted(by_id) == sorted(f"term-{i}" for i in range(n))
    redone = [i for i, v in by_id.items() if len(v) > 1]
    assert redone == [], f"work completed before SIGTERM was redone: {redone[:5]}"


async def _count_results(bootstrap: str, env: dict[str, str]) -> bool:
    got = await collect(
        bootstrap,
        [env["ESCALATOR_RESULTS_TOPIC"]],
        lambda c: len(c.records) >= 10,
        timeout_s=1,
        read_for_s=True,  # a poll: wait_for asks again
    )
    return len(got.records) >= 10


DOCUMENTED_SERIES = [
    "escalator_requests_total",
    "escalator_decisions_total",
    "escalator_dead_letters_total",
    "escalator_confidence_bucket",
    "escalator_model_latency_seconds_bucket",
    "escalator_processing_seconds_bucket",
    "escalator_tokens_total",
    "escalator_cost_usd_total",
    "escalator_retries_total",
    "escalator_in_flight",
    "escalator_in_flight_limit",
    "escalator_paused_partitions",
    "escalator_circuit_open",
    "escalator_commit_lag",
    "escalator_commits_total",
    "escalator_rebalances_total",
    "escalator_ready",
]


async def test_metrics_and_health_endpoints(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """/metrics holds the documented series; /healthz and /readyz answer 200 once joined."""
    env = make_env(kafka_bootstrap, sim_url, unique)
    async with running_service(env, ["cheap", "strong"]) as service:
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(30, "m", TEXTS))
        await collect(
            kafka_bootstrap, [env["ESCALATOR_RESULTS_TOPIC"]], lambda c: len(c.records) >= 30
        )
        await asyncio.sleep(1.2)  # one commit interval, so commit lag is published
        base = f"http://127.0.0.1:{service.health_port}"
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{base}/metrics")).text
            health = await http.get(f"{base}/healthz")
            ready = await http.get(f"{base}/readyz")
    assert health.status_code == 200 and ready.status_code == 200
    missing = [s for s in DOCUMENTED_SERIES if s not in metrics]
    assert missing == []
    assert 'escalator_decisions_total{label="safe",outcome="accepted",tier="cheap"}' in metrics
    assert 'type="cache_read"' in metrics  # the moderation prompt is long enough to be cached
