"""Tier 0 on the real broker: the service answers requests (the emulator's models),
``escalator tier0 pairs`` joins the requests topic with the results topic without a consumer
group, ``tier0 train`` fits on what it wrote, ``tier0 certify`` certifies on a later window,
and the cheap tier then answers with the artefact (ESCALATOR_TIER0_FILE)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import collect, make_env, produce, running_service
from tests.integration.test_measure import run_cli
from tests.integration.test_pipeline import TEXTS

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
async def test_pairs_join_requests_with_their_results_and_train_on_them(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """One pair per answered request, with the request's text and the result's label and
    models; a request in the topic with no result yet (not answered) is left out; nothing is
    committed for any group; train accepts the file."""
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0")
    n = 60
    values = [
        orjson.dumps({"id": f"t0-{i}", "text": f"{TEXTS[i % len(TEXTS)]} ({i})"}) for i in range(n)
    ]
    async with running_service(env, ["cheap", "strong"]):
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], values)
        got = await collect(
            kafka_bootstrap, [env["ESCALATOR_RESULTS_TOPIC"]], lambda c: len(c.records) >= n
        )
    results = {r["id"]: r for r in (orjson.loads(rec.value) for rec in got.records)}
    # A request the service never saw (it has stopped): no result, so no pair.
    await produce(
        kafka_bootstrap,
        env["ESCALATOR_REQUESTS_TOPIC"],
        [orjson.dumps({"id": "t0-late", "text": "never answered"})],
    )
    out = tmp_path / "pairs.jsonl"
    done = run_cli(env, "tier0", "pairs", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {n} pair(s)" in done.stderr
    pairs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sorted(p["id"] for p in pairs) == sorted(results)
    for p in pairs:
        i = int(p["id"].split("-")[1])
        assert p["text"] == f"{TEXTS[i % len(TEXTS)]} ({i})"
        assert p["label"] == results[p["id"]]["label"]
        assert p["cheap_model"] == next(
            a["model"] for a in results[p["id"]]["attempts"] if a["tier"] == "cheap"
        )
    assert any(p["strong_model"] for p in pairs)  # some were escalated
    trained = run_cli(
        env, "tier0", "train", "--input", str(out), "--output", str(tmp_path / "t.json")
    )
    assert trained.returncode == 0, trained.stderr
    assert f"trained tier 0 on {n} pairs" in trained.stdout


def _requests(prefix: str, n: int, start: int = 0) -> list[bytes]:
    return [
        orjson.dumps({"id": f"{prefix}-{i}", "text": f"{TEXTS[i % len(TEXTS)]} ({i})"})
        for i in range(start, start + n)
    ]


@pytest.mark.timeout(600)
async def test_train_certify_then_the_cheap_tier_answers_with_tier0(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """Answers from the models (shadow off) make the pairs; training's window ends where the
    certification window starts; the service restarted with the certified artefact answers
    requests at tier 0 (no model call: a single decision, tier tier0, with the artefact's
    version; cost 0), each with the label the models gave the same text, and every request,
    new texts included, ends with exactly one result (new texts go to tier 0 or the models, as
    its certified threshold says: on the emulator's keyword world it may be 0, answering all);
    at a sample rate of 0.5 some of tier 0's answers also carry the cheap model's, as shadow
    decisions, and the results are still tier 0's."""
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0")
    half = 180
    results_topic, decisions_topic = (
        env["ESCALATOR_RESULTS_TOPIC"],
        env["ESCALATOR_DECISIONS_TOPIC"],
    )
    async with running_service(env, ["cheap", "strong"]):
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], _requests("a", half))
        await collect(kafka_bootstrap, [results_topic], lambda c: len(c.records) >= half)
        split_ms = int(time.time() * 1000) + 1
        await asyncio.sleep(0.01)
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], _requests("a", half, half))
        got = await collect(kafka_bootstrap, [results_topic], lambda c: len(c.records) >= 2 * half)
    routed = {r["id"]: r["label"] for r in (orjson.loads(rec.value) for rec in got.records)}
    by_text = {TEXTS[int(rid.split("-")[1]) % len(TEXTS)]: label for rid, label in routed.items()}

    pairs, artefact = tmp_path / "pairs.jsonl", tmp_path / "tier0.json"
    assert run_cli(env, "tier0", "pairs", "--output", str(pairs)).returncode == 0
    trained = run_cli(
        env, "tier0", "train", "--input", str(pairs), "--until", str(split_ms),
        "--output", str(artefact),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    certified = run_cli(
        env, "tier0", "certify", "--artefact", str(artefact), "--input", str(pairs),
        "--since", str(split_ms), "--target", "0.95",
    )  # fmt: skip
    assert certified.returncode == 0, certified.stdout + certified.stderr
    version = orjson.loads(artefact.read_bytes())["version"]

    # Half of tier 0's answers are also asked of the cheap model (its live test's units).
    run_env = {**env, "ESCALATOR_TIER0_FILE": str(artefact), "ESCALATOR_TIER0_SAMPLE_RATE": "0.5"}
    known = _requests("b", 60)
    novel = [
        orjson.dumps({"id": f"n-{i}", "text": f"Quarterly figures for region {i} are attached."})
        for i in range(10)
    ]
    ids = {orjson.loads(v)["id"] for v in known + novel}
    async with running_service(run_env, ["cheap", "strong"]):
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], known + novel)
        got = await collect(
            kafka_bootstrap,
            [results_topic, decisions_topic],
            lambda c: ids <= set(c.results_by_id(results_topic)),
            linger_s=1.0,
        )
    results = {k: v for k, v in got.results_by_id(results_topic).items() if k in ids}
    assert {k: len(v) for k, v in results.items()} == dict.fromkeys(ids, 1)
    local = {k: v[0] for k, v in results.items() if v[0]["tier"] == "tier0"}
    # The known texts are the windows' own: every one is above any certified threshold.
    assert {k for k in local if k.startswith("b-")} == {k for k in ids if k.startswith("b-")}
    decisions: dict[str, list[dict[str, object]]] = {}
    for rec in got.on(decisions_topic):
        d = orjson.loads(rec.value)
        if d["id"] in ids:
            decisions.setdefault(d["id"], []).append(d)
    sampled = 0
    for rid, result in local.items():
        assert result["model"] == version and result["cost_usd"] == 0
        if rid.startswith("b-"):  # a text the models answered in the windows
            assert result["label"] == by_text[TEXTS[int(rid.split("-")[1]) % len(TEXTS)]]
        # One decision of tier 0's; no escalation; a sampled one also has the cheap model's
        # answer, as a shadow decision with the sample rate (measurement only).
        (only,) = [d for d in decisions[rid] if "tier0_version" in d]
        assert only["tier0_version"] == version and only["outcome"] == "accepted"
        for d in decisions[rid]:
            if d is not only:
                assert (d["attempt"]["tier"], d["outcome"], d["shadow"], d["sample_rate"]) == (
                    "cheap", "shadow", True, 0.5,
                )  # fmt: skip
                sampled += 1
    assert 0 < sampled < len(local)
    for rid in ids - set(local):
        assert results[rid][0]["tier"] in ("cheap", "strong")
        assert all("tier0_version" not in d for d in decisions[rid])
