"""The human tier end to end on a real broker: the strong tier hands requests to the reviews
topic, the console's queues lease them to reviewers, and a decision becomes the request's one
result and a human decision; a console that dies before committing loses nothing and its
repeated decisions count once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest
from aiokafka import TopicPartition

from escalator.config import Settings, load_settings
from escalator.contract.reviews import (
    Verdict,
    human_decision_value,
    human_result_value,
    review_item_value,
)
from escalator.engine.at_least_once import AtLeastOnce
from escalator.engine.delivery import Delivery
from escalator.kafka.clients import ProducerHandle
from escalator.observability.metrics import Metrics
from escalator.review.assemble import build_console
from escalator.review.auth import hash_secret
from escalator.review.handler import ReviewHandler
from tests.integration.harness import (
    collect,
    committed_total,
    make_env,
    produce,
    requests,
    running_service,
    setup_topics,
    validator,
    wait_for,
)
from tests.unit.review.fakes import make_item

pytestmark = pytest.mark.integration

TEXTS = [
    "What a lovely afternoon for a picnic in the park with the children.",
    "He said he would hurt them if they did not pay.",
    "Thanks for the update, see you at the meeting tomorrow morning.",
]


def human_env(bootstrap: str, sim_url: str, unique: str) -> dict[str, str]:
    # Everything escalates (cheap threshold above every confidence), and every strong answer
    # is below the strong threshold: every request goes to people.
    return make_env(
        bootstrap,
        sim_url,
        unique,
        ESCALATOR_THRESHOLD="1.0",
        ESCALATOR_SHADOW_RATE="0",
        ESCALATOR_HUMAN_TIER="on",
        ESCALATOR_STRONG_THRESHOLD="1.0",
        ESCALATOR_REVIEW_LEASE_S="30",
    )


@contextlib.asynccontextmanager
async def console(env: dict[str, str], metrics: Metrics) -> AsyncIterator[ReviewHandler]:
    """The console's process, running and joined, for the block; its queues are yielded."""
    built = build_console(load_settings(env), metrics)
    async with built.service as service:
        await asyncio.wait_for(service.wait_joined(), 60)
        yield built.queues


async def fill_reviews(env: dict[str, str], bootstrap: str, n: int, prefix: str) -> None:
    async with running_service(env, ["cheap", "strong"]):
        await produce(bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, prefix, TEXTS))
        got = await collect(
            bootstrap, [env["ESCALATOR_REVIEWS_TOPIC"]], lambda c: len(c.records) >= n
        )
    check = validator("review.v1.json")
    for record in got.records:
        check.validate(orjson.loads(record.value))


async def test_reviewed_requests_get_one_human_result_each(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """Handed-on requests have no result until decided; two reviewers get different items;
    each decision gives one result (tier human, the reviewer) and one human decision."""
    env = human_env(kafka_bootstrap, sim_url, unique)
    n = 12
    await fill_reviews(env, kafka_bootstrap, n, "hu")
    early = await collect(
        kafka_bootstrap,
        [env["ESCALATOR_RESULTS_TOPIC"]],
        lambda c: False,
        timeout_s=2,
        read_for_s=True,
    )
    assert early.records == [], "a reviewed request's result waits for its reviewer"
    metrics = Metrics()
    async with console(env, metrics) as queues:
        await wait_for(lambda: queues.stats()[0].depth == n, timeout_s=60)
        a = queues.lease("review", "alice")
        b = queues.lease("review", "bob")
        assert a is not None and b is not None and a.item.review_id != b.item.review_id
        assert queues.lease("review", "alice") == a, "a reviewer keeps their item"
        decided: dict[str, tuple[str, str]] = {}
        for reviewer in ["alice", "bob"] * (n // 2):
            lease = queues.lease("review", reviewer)
            assert lease is not None
            label = lease.item.labels[len(decided) % len(lease.item.labels)]
            assert await queues.decide(lease.id, reviewer, label, None) == "done"
            decided[lease.item.request.id] = (label, reviewer)
        assert queues.lease("review", "alice") is None
        assert queues.stats()[0].depth == 0
    got = await collect(
        kafka_bootstrap,
        [env["ESCALATOR_RESULTS_TOPIC"], env["ESCALATOR_DECISIONS_TOPIC"]],
        lambda c: len(c.records) >= 3 * n,
        linger_s=1.0,
    )
    results = [orjson.loads(r.value) for r in got.records if r.topic.startswith("res-")]
    assert sorted(r["id"] for r in results) == sorted(decided)
    check = validator("result.v1.json")
    for r in results:
        check.validate(r)
        assert (r["label"], r["reviewer"]) == decided[r["id"]] and r["tier"] == "human"
    humans = [
        d
        for d in (orjson.loads(r.value) for r in got.records if r.topic.startswith("dec-"))
        if d["outcome"] == "human"
    ]
    assert sorted(d["id"] for d in humans) == sorted(decided)
    assert all(d["gold_label"] == decided[d["id"]][0] for d in humans)
    exposition = metrics.exposition().decode()
    assert (
        'escalator_review_decisions_total{outcome="done",queue="review",reviewer="alice"} 6.0'
        in exposition
    )


class NeverCommits(AtLeastOnce):
    """A console that dies after publishing and before committing: it never commits."""

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        return None


def crashing(settings: Settings, group: str, producer: ProducerHandle) -> Delivery:
    return NeverCommits(producer)


async def test_a_console_that_dies_uncommitted_loses_nothing_and_counts_repeats_once(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """The first console decides half the items and dies without committing; the next one
    shows only the undecided half (the decided ones are recognised from the decisions log),
    and every request ends with exactly one result."""
    env = human_env(kafka_bootstrap, sim_url, unique)
    n = 10
    await fill_reviews(env, kafka_bootstrap, n, "cr")
    settings = load_settings(env)
    first = build_console(settings, Metrics(), strategy=crashing)
    async with first.service as service:
        await asyncio.wait_for(service.wait_joined(), 60)
        q = first.queues
        await wait_for(lambda: q.stats()[0].depth == n, timeout_s=60)
        for _ in range(n // 2):
            lease = q.lease("review", "alice")
            assert lease is not None
            assert await q.decide(lease.id, "alice", lease.item.labels[0], None) == "done"
    metrics = Metrics()
    async with console(env, metrics) as queues:
        await wait_for(lambda: queues.stats()[0].depth == n - n // 2, timeout_s=60)
        while (lease := queues.lease("review", "bob")) is not None:
            assert await queues.decide(lease.id, "bob", lease.item.labels[1], None) == "done"
    assert 'escalator_review_duplicates_total{queue="review"} 5.0' in metrics.exposition().decode()
    got = await collect(
        kafka_bootstrap,
        [env["ESCALATOR_RESULTS_TOPIC"]],
        lambda c: len(c.records) >= n,
        linger_s=2.0,
    )
    ids = [orjson.loads(r.value)["id"] for r in got.records]
    assert sorted(ids) == sorted(f"cr-{i}" for i in range(n)), "one result per request"


TOKEN = "a-test-token-that-is-long-enough-0123456789"
LEASE_RE = re.compile(rb'name="lease" value="([^"]+)"')


class ConsoleProcess:
    """``escalator review serve`` in its own process, so that it can be SIGKILLed."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "escalator", "review", "serve"],
                env=self.env,
                stdout=log,
                stderr=log,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


async def decide_one(client: httpx.AsyncClient, label: str) -> bool:
    """Lease the next item over HTTP (Bearer) and decide it; False when the queue is empty."""
    page = await client.get("/queue/review")
    page.raise_for_status()
    found = LEASE_RE.search(page.content)
    if found is None:
        return False
    lease = found.group(1).decode()
    response = await client.post(
        "/queue/review/decide", data={"lease": lease, "label": label}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    assert "outcome=done" in response.headers["location"]
    return True


async def test_a_killed_console_loses_no_item(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """SIGKILL the console right after a decision, twice; the next console serves what is
    left, and in the end every request has exactly one human result, none lost."""
    env = human_env(kafka_bootstrap, sim_url, unique)
    n = 9
    await fill_reviews(env, kafka_bootstrap, n, "kill")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"carol:{hash_secret('token', TOKEN)}\n")
    port = free_port()
    env.update(
        ESCALATOR_REVIEW_TOKENS_FILE=str(tokens),
        ESCALATOR_REVIEW_PORT=str(port),
        ESCALATOR_SESSION_TIMEOUT_MS="6000",
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    decided = 0
    console = ConsoleProcess(env, tmp_path / "console.log")
    for run in range(3):
        console.start()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
        ) as client:
            await wait_for(lambda: _serving(client), timeout_s=90)
            for _ in range(2 if run < 2 else n):
                if not await decide_one(client, "unsafe"):
                    break
                decided += 1
        if run < 2:
            console.kill()  # no drain, no commit, no leaving the group
        else:
            assert console.terminate() == 0
    got = await collect(
        kafka_bootstrap,
        [env["ESCALATOR_RESULTS_TOPIC"]],
        lambda c: len(c.records) >= n,
        linger_s=2.0,
    )
    ids = sorted(orjson.loads(r.value)["id"] for r in got.records)
    assert sorted(set(ids)) == sorted(f"kill-{i}" for i in range(n)), "no item lost"
    assert decided >= n
    # A repeat can only come from a decision published right before a kill and not yet
    # committed; the next console recognises it, so no request is shown twice.
    assert len(ids) == n, f"{len(ids) - n} duplicate results"


async def _serving(client: httpx.AsyncClient) -> bool:
    try:
        page = await client.get("/queue/review")
    except httpx.TransportError:
        return False
    return page.status_code == 200 and (LEASE_RE.search(page.content) is not None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_both_queues_commit_through_the_engine(
    kafka_bootstrap: str, unique: str, guarantee: str
) -> None:
    """Items put on both queue topics (and one bad record) under each guarantee: every
    decision is visible to a read_committed reader once, the bad record is a dead letter in
    the tiers' shape, and the group's committed offsets pass everything decided."""
    env = make_env(
        kafka_bootstrap,
        "http://127.0.0.1:9",
        f"{unique}-{guarantee[:3]}",
        ESCALATOR_PROCESSING_GUARANTEE=guarantee,
    )
    settings = load_settings(env)
    await setup_topics(settings)
    t = settings.topics
    reviews = [review_item_value(make_item(f"q-{i}", "text", created_ms=i)) for i in range(3)]
    judged = [review_item_value(make_item("j-0", "text", queue="adjudication"))]
    await produce(kafka_bootstrap, t.reviews, [b"not a review item", *reviews])
    await produce(kafka_bootstrap, t.adjudications, judged)
    metrics = Metrics()
    async with console(env, metrics) as queues:
        await wait_for(lambda: [s.depth for s in queues.stats()] == [3, 1], timeout_s=60)
        for queue in ("review", "review", "review", "adjudication"):
            lease = queues.lease(queue, "ana")  # type: ignore[arg-type]
            assert lease is not None
            assert await queues.decide(lease.id, "ana", lease.item.labels[0], None) == "done"
        assert [s.depth for s in queues.stats()] == [0, 0]
        await wait_for(
            lambda: _committed_is(kafka_bootstrap, settings.review.group, t.reviews, 4),
            timeout_s=30,
        )
        await wait_for(
            lambda: _committed_is(kafka_bootstrap, settings.review.group, t.adjudications, 1),
            timeout_s=30,
        )
    got = await collect(
        kafka_bootstrap,
        [t.results, t.decisions, t.dead_letter],
        lambda c: len(c.records) >= 3 + 4 + 1,
        linger_s=1.0,
        isolation_level="read_committed",
    )
    results = [orjson.loads(r.value) for r in got.on(t.results)]
    assert sorted(r["id"] for r in results) == ["q-0", "q-1", "q-2"]
    humans = [orjson.loads(r.value) for r in got.on(t.decisions)]
    assert sorted(d["id"] for d in humans) == ["j-0", "q-0", "q-1", "q-2"]
    (dead,) = got.on(t.dead_letter)
    headers = dict(dead.headers)
    assert (headers["x-escalator-tier"], headers["x-escalator-source-offset"]) == (b"review", b"0")
    series = (
        'escalator_transactions_total{result="committed",tier="review"}'
        if guarantee == "exactly_once"
        else 'escalator_commits_total{result="ok",tier="review"}'
    )
    assert series in metrics.exposition().decode()


async def _committed_is(bootstrap: str, group: str, topic: str, want: int) -> bool:
    return await committed_total(bootstrap, group, topic) == want


async def test_a_decision_whose_result_is_missing_does_not_skip_its_item(
    kafka_bootstrap: str, unique: str
) -> None:
    """The recovery scan: an item with a human decision and its human result on the logs is
    recognised as decided; one whose decision is there but whose result is not (a console
    that crashed between the two acknowledgements) is shown again, so its request still gets
    its one result."""
    env = make_env(kafka_bootstrap, "http://127.0.0.1:9", unique)
    settings = load_settings(env)
    await setup_topics(settings)
    t = settings.topics
    done, orphan = make_item("done-1", "text"), make_item("orphan-1", "text")
    verdict = Verdict(reviewer="ana", label="safe", note=None, seconds=1.0)
    await produce(
        kafka_bootstrap,
        t.decisions,
        [human_decision_value(i, verdict, "x/0/0") for i in (done, orphan)],
    )
    await produce(kafka_bootstrap, t.results, [human_result_value(done, verdict)])
    await produce(kafka_bootstrap, t.reviews, [review_item_value(i) for i in (done, orphan)])
    metrics = Metrics()
    async with console(env, metrics) as queues:
        await wait_for(lambda: queues.stats()[0].depth == 1, timeout_s=60)
        await asyncio.sleep(1.0)
        assert [i.request.id for i in queues.waiting("review")] == ["orphan-1"]
    assert 'escalator_review_duplicates_total{queue="review"} 1.0' in metrics.exposition().decode()
