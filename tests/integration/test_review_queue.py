"""The human tier end to end on a real broker: the strong tier hands requests to the reviews
topic, the console's queues lease them to reviewers, and a decision becomes the request's one
result and a human decision; a console that dies before committing loses nothing and its
repeated decisions count once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from escalator.config import load_settings
from escalator.observability.metrics import Metrics
from escalator.review.consumer import ReviewConsumer
from tests.integration.harness import (
    collect,
    make_env,
    produce,
    requests,
    running_service,
    validator,
    wait_for,
)

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
async def console(env: dict[str, str], metrics: Metrics) -> AsyncIterator[ReviewConsumer]:
    queues = ReviewConsumer.from_settings(load_settings(env), metrics)
    async with queues:
        task = asyncio.create_task(queues.run())
        try:
            await asyncio.wait_for(queues.wait_joined(), 60)
            yield queues
        finally:
            queues.stop()
            await task


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
        kafka_bootstrap, [env["ESCALATOR_RESULTS_TOPIC"]], lambda c: False, timeout_s=2
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


class CrashingConsumer(ReviewConsumer):
    """A console that dies after publishing and before committing: it never commits."""

    async def _commit_unlocked(self, tps: list[object]) -> None:  # type: ignore[override]
        return None


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
    first = CrashingConsumer.from_settings(settings, Metrics())
    async with first:
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(first.wait_joined(), 60)
        await wait_for(lambda: first.stats()[0].depth == n, timeout_s=60)
        for _ in range(n // 2):
            lease = first.lease("review", "alice")
            assert lease is not None
            assert await first.decide(lease.id, "alice", lease.item.labels[0], None) == "done"
        first.stop()
        await task
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
