"""The service against the emulator in its documented-default mode, through the real SDK and
the real broker: thinking on by default, enum capitalization, refusals, and account-level
failures that must hold traffic (never dead-letter, never escalate) and recover."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from escalator_dev import datasets
from tests.conftest import running_sim
from tests.integration.harness import (
    collect,
    make_env,
    produce,
    requests,
    running_service,
    validator,
)
from tests.reliability.common import metric_sum as metric
from tests.reliability.common import set_sim, sim_stats

pytestmark = pytest.mark.integration

#: The cheap model answers this with confidence 0.93: accepted, never escalated.
CONFIDENT = "What a lovely afternoon for a picnic in the park with the children."


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status, await response.json()


@pytest.mark.timeout(600)
async def test_two_thousand_real_texts_through_both_tiers_dead_letter_nothing(
    kafka_bootstrap: str, unique: str
) -> None:
    """Documented defaults (thinking on unless turned off, enum capitalization varied at 3%,
    refusals on, a 400 for unsupported schema keywords): 2,000 of the bundled human-labelled
    texts give one result each and no dead letter; the emulator saw varied capitalization,
    refusals and no 400."""
    samples = datasets.load_harm_samples()
    n = 2000
    values = [
        orjson.dumps({"id": f"dd-{i}", "text": samples[i % len(samples)].text}) for i in range(n)
    ]
    with running_sim() as url:
        env = make_env(kafka_bootstrap, url, unique, ESCALATOR_SHADOW_RATE="0.1")
        async with running_service(env, ["cheap", "strong"]) as service:
            await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], values)
            got = await collect(
                kafka_bootstrap,
                [env["ESCALATOR_RESULTS_TOPIC"], env["ESCALATOR_DEAD_LETTER_TOPIC"]],
                lambda c: len(c.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) >= n,
                timeout_s=480,
                linger_s=1.0,
            )
            invalid = metric(service, "escalator_invalid_answers_total")
        stats = await sim_stats(url)
    by_id = got.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])
    assert len(by_id) == n
    assert got.on(env["ESCALATOR_DEAD_LETTER_TOPIC"]) == []
    assert stats.get("status:400", 0) == 0 and stats.get("max_tokens_in_thinking", 0) == 0
    assert stats["case_varied"] > 0, "the run never exercised enum capitalization"
    assert invalid == 0
    check = validator("result.v1.json")
    for results in by_id.values():
        check.validate(results[0])
    refused = [r[0] for r in by_id.values() if r[0].get("refusal_category")]
    assert stats.get("refusals", 0) > 0 and refused, "no refusal in 2,000 real texts"
    assert all(r["label"] == "unsafe" and r["tier"] == "strong" for r in refused)


@pytest.mark.timeout(300)
async def test_refusals_are_never_retried_and_each_request_has_one_outcome(
    kafka_bootstrap: str, unique: str, tmp_path: Any
) -> None:
    """Refused texts: one cheap call and one strong call each (never more), the category on
    the result and the decision; without a refusal_label, a model_refused dead letter."""
    task = tmp_path / "task.json"
    task.write_text(
        orjson.dumps(
            {"labels": ["safe", "unsafe", "review-needed"], "instructions": "Moderate it."}
        ).decode()
    )
    n = 40
    texts = ["Tell me about it [[sim:refuse:bio]]", CONFIDENT]
    with running_sim() as url:
        env = make_env(kafka_bootstrap, url, unique, ESCALATOR_SHADOW_RATE="0")
        env["ESCALATOR_TASK_FILE"] = str(task)
        async with running_service(env, ["cheap", "strong"]) as service:
            await produce(
                kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, "rf", texts)
            )
            got = await collect(
                kafka_bootstrap,
                [
                    env["ESCALATOR_RESULTS_TOPIC"],
                    env["ESCALATOR_DEAD_LETTER_TOPIC"],
                    env["ESCALATOR_DECISIONS_TOPIC"],
                ],
                lambda c: (
                    len(c.on(env["ESCALATOR_RESULTS_TOPIC"]))
                    + len(c.on(env["ESCALATOR_DEAD_LETTER_TOPIC"]))
                    >= n
                ),
                timeout_s=120,
                linger_s=1.0,
            )
            refusals = metric(service, "escalator_refusals_total", category="bio")
        stats = await sim_stats(url)
    dead = got.on(env["ESCALATOR_DEAD_LETTER_TOPIC"])
    results = got.on(env["ESCALATOR_RESULTS_TOPIC"])
    assert len(dead) == n // 2 and len(results) == n // 2
    check = validator("dead-letter-headers.v1.json")
    for record in dead:
        headers = dict(record.headers)
        check.validate({k: v.decode() for k, v in headers.items()})
        assert headers["x-escalator-reason"] == b"model_refused"
        assert headers["x-escalator-refusal-category"] == b"bio"
    decisions = [orjson.loads(r.value) for r in got.on(env["ESCALATOR_DECISIONS_TOPIC"])]
    check_decision = validator("decision.v1.json")
    for decision in decisions:
        check_decision.validate(decision)
    assert sum(1 for d in decisions if d["outcome"] == "refused") == n // 2
    # Exactly one refusal per tier per refused request: nothing was retried.
    assert stats["refusals"] == n == refusals


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("ttl_s", "outcome"), [(300.0, "redeemed"), (0.0, "not_applied:expired")])
async def test_a_cheap_refusal_is_answered_with_its_fallback_credit(
    kafka_bootstrap: str, unique: str, ttl_s: float, outcome: str
) -> None:
    """Only the cheap model refuses: each refusal carries a fallback credit token (on the cheap
    decision and in the escalation), the strong call echoes it, and the strong decision
    records the outcome: redeemed within the token's life, not_applied:expired after it (the
    call is still answered, at the normal price). The cheap refusal itself stays billed."""
    n = 12
    with running_sim() as url:
        await set_sim(url, model_faults={"claude-haiku-5-5": {"refuse": 1.0}}, credit_ttl_s=ttl_s)
        env = make_env(kafka_bootstrap, url, unique, ESCALATOR_SHADOW_RATE="0")
        async with running_service(env, ["cheap", "strong"]):
            await produce(
                kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, "fc", [CONFIDENT])
            )
            got = await collect(
                kafka_bootstrap,
                [env["ESCALATOR_RESULTS_TOPIC"], env["ESCALATOR_DECISIONS_TOPIC"]],
                lambda c: len(c.on(env["ESCALATOR_RESULTS_TOPIC"])) >= n,
                timeout_s=120,
                linger_s=1.0,
            )
        stats = await sim_stats(url)
    check = validator("decision.v1.json")
    decisions = [orjson.loads(r.value) for r in got.on(env["ESCALATOR_DECISIONS_TOPIC"])]
    for decision in decisions:
        check.validate(decision)
    cheap = [d["attempt"] for d in decisions if d["attempt"]["tier"] == "cheap"]
    strong = [d["attempt"] for d in decisions if d["attempt"]["tier"] == "strong"]
    assert len(cheap) >= n and len(strong) >= n
    assert all(a["stop_reason"] == "refusal" and a["fallback_credit_token"] for a in cheap)
    assert all(a["cost_usd"] > 0 for a in cheap)  # the refused call is billed
    assert all(a["valid"] and a["fallback_credit"] == outcome for a in strong)
    results = [orjson.loads(r.value) for r in got.on(env["ESCALATOR_RESULTS_TOPIC"])]
    assert {r["escalation_reason"] for r in results} == {"cheap_refused"}
    key = "fallback_credit:" + outcome.removeprefix("not_applied:")
    assert stats[key] >= n and stats["fallback_credits_minted"] >= n


ACCOUNT_FAULTS = {
    "spend-limit 400": ({"faults": {"spend-limit": 1.0}}, "spend_limit"),
    "billing 402": ({"faults": {"billing": 1.0}}, "billing"),
    "spend-cap 429": ({"faults": {"spend-cap": 1.0}}, "spend_limit"),
    "retired model 404": ({"retired": ["claude-haiku-5-5"]}, "model_not_found"),
    "revoked key 401": ({"revoked_keys": ["simulator-no-key"]}, "credentials"),
}
CLEAR = {"faults": {}, "retired": [], "revoked_keys": []}
#: The probe interval while blocked, and how long the hold is watched.
PROBE_S = 0.5
HELD_S = 2.5


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", sorted(ACCOUNT_FAULTS))
async def test_account_failures_hold_traffic_say_why_and_recover(
    kafka_bootstrap: str, unique: str, fault: str
) -> None:
    """While the account cannot call the model: no dead letter, no escalation, /readyz 503
    naming the reason, api_blocked set. When it clears, every request is answered at the
    cheap tier."""
    config, reason = ACCOUNT_FAULTS[fault]
    n = 60
    with running_sim() as url:
        env = make_env(
            kafka_bootstrap,
            url,
            unique,
            ESCALATOR_SHADOW_RATE="0",
            ESCALATOR_BLOCKED_PROBE_S=str(PROBE_S),
        )
        async with running_service(env, ["cheap", "strong"]) as service:
            status, _ = await readyz(service.health_port)
            assert status == 200
            await set_sim(url, **config)
            await produce(
                kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, "acct", [CONFIDENT])
            )
            deadline = time.monotonic() + 60
            body: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status, body = await readyz(service.health_port)
                if status == 503:
                    break
                await asyncio.sleep(0.2)
            assert status == 503, body
            (cheap,) = [t for t in body["tiers"] if t["tier"] == "cheap"]
            assert cheap["held"] == reason and cheap["message"]
            assert metric(service, "escalator_api_blocked", tier="cheap", reason=reason) == 1
            before = (await sim_stats(url)).get(f"status:{_status(fault)}", 0)
            await asyncio.sleep(HELD_S)  # five probe intervals while blocked
            blocked_calls = (await sim_stats(url)).get(f"status:{_status(fault)}", 0) - before
            await set_sim(url, **CLEAR)
            got = await collect(
                kafka_bootstrap,
                [
                    env["ESCALATOR_RESULTS_TOPIC"],
                    env["ESCALATOR_DEAD_LETTER_TOPIC"],
                    env["ESCALATOR_ESCALATIONS_TOPIC"],
                ],
                lambda c: len(c.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) >= n,
                timeout_s=60,
                linger_s=1.0,
            )
            status, _ = await readyz(service.health_port)
            assert metric(service, "escalator_api_blocked", tier="cheap", reason=reason) == 0
    results = got.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])
    assert len(results) == n and all(r[0]["tier"] == "cheap" for r in results.values())
    assert got.on(env["ESCALATOR_DEAD_LETTER_TOPIC"]) == []
    assert got.on(env["ESCALATOR_ESCALATIONS_TOPIC"]) == []
    assert status == 200
    # Held means held: one probe per PROBE_S while blocked, not each of the n records retrying
    # (which makes at least n calls). The window is not aligned with the probe schedule: one
    # probe more at each end, and one for a probe in flight when it opened.
    allowed = HELD_S / PROBE_S + 3
    # The test's own sizing: retrying records would make at least n calls, so the bound below
    # tells holding from retrying only while it is under n.
    assert allowed < n, (allowed, n)
    assert 1 <= blocked_calls <= allowed, f"{blocked_calls} calls while blocked, {allowed} allowed"


def _status(fault: str) -> int:
    return int(fault.rsplit(" ", 1)[1])


@pytest.mark.timeout(300)
async def test_a_spend_cap_on_the_strong_model_holds_escalations_only(
    kafka_bootstrap: str, unique: str
) -> None:
    """The strong model's account trouble holds the strong tier: escalations wait, nothing is
    dead-lettered, the cheap tier keeps answering what it is sure of."""
    n = 40
    texts = [CONFIDENT, "He said he would hurt them if they did not pay."]
    with running_sim() as url:
        env = make_env(
            kafka_bootstrap, url, unique, ESCALATOR_SHADOW_RATE="0", ESCALATOR_BLOCKED_PROBE_S="0.5"
        )
        async with running_service(env, ["cheap", "strong"]) as service:
            await set_sim(url, model_faults={"claude-sonnet-5-5": {"spend-cap": 1.0}})
            await produce(
                kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, "sc", texts)
            )
            early = await collect(
                kafka_bootstrap,
                [env["ESCALATOR_RESULTS_TOPIC"]],
                lambda c: len(c.records) >= n // 2,
                timeout_s=60,
                linger_s=2.0,
            )
            assert {orjson.loads(r.value)["tier"] for r in early.records} == {"cheap"}
            status, body = await readyz(service.health_port)
            assert status == 503
            (strong,) = [t for t in body["tiers"] if t["tier"] == "strong"]
            assert strong["held"] == "spend_limit"
            await set_sim(url, model_faults={})
            got = await collect(
                kafka_bootstrap,
                [env["ESCALATOR_RESULTS_TOPIC"], env["ESCALATOR_DEAD_LETTER_TOPIC"]],
                lambda c: len(c.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) >= n,
                timeout_s=60,
            )
    assert got.on(env["ESCALATOR_DEAD_LETTER_TOPIC"]) == []
    assert len(got.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) == n


@pytest.mark.timeout(300)
async def test_a_rate_limited_cheap_model_holds_instead_of_escalating(
    kafka_bootstrap: str, unique: str
) -> None:
    """Only the cheap model answers 429 for a while: requests wait and are then answered by
    the cheap model; none is escalated to the strong one (about 20x the cost)."""
    n = 60
    with running_sim("--retry-after-s", "0.2") as url:
        env = make_env(kafka_bootstrap, url, unique, ESCALATOR_SHADOW_RATE="0")
        async with running_service(env, ["cheap", "strong"]):
            await set_sim(url, model_faults={"claude-haiku-5-5": {"429": 1.0}})
            await produce(
                kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(n, "rl", [CONFIDENT])
            )
            await asyncio.sleep(4)
            await set_sim(url, model_faults={})
            got = await collect(
                kafka_bootstrap,
                [env["ESCALATOR_RESULTS_TOPIC"], env["ESCALATOR_ESCALATIONS_TOPIC"]],
                lambda c: len(c.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])) >= n,
                timeout_s=60,
                linger_s=1.0,
            )
        stats = await sim_stats(url)
    assert stats["fault:429"] > 0
    assert got.on(env["ESCALATOR_ESCALATIONS_TOPIC"]) == []
    assert {r[0]["tier"] for r in got.results_by_id(env["ESCALATOR_RESULTS_TOPIC"]).values()} == {
        "cheap"
    }
