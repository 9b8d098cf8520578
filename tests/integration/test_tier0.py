"""Tier 0 on the real broker: the service answers requests (the emulator's models),
``escalator tier0 pairs`` joins the requests topic with the results topic without a consumer
group, ``tier0 train`` fits on what it wrote, ``tier0 certify`` certifies on a later window,
and the cheap tier then answers with the artefact (ESCALATOR_TIER0_FILE)."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from escalator.process import Service
from escalator.tier0.artefact import read_manifest, read_model
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


async def _answered(env: dict[str, str], kafka_bootstrap: str, values: list[bytes]) -> None:
    """Produce ``values`` and wait until each has its result (the service is running)."""
    ids = {orjson.loads(v)["id"] for v in values}
    await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], values)
    await collect(
        kafka_bootstrap,
        [env["ESCALATOR_RESULTS_TOPIC"]],
        lambda c: ids <= set(c.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])),
    )


def _pairs(env: dict[str, str], tmp_path: Path) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    done = run_cli(env, "tier0", "pairs", "--output", str(pairs))
    assert done.returncode == 0, done.stderr
    return pairs


def _certify(env: dict[str, str], artefact: Path, pairs: Path, since_ms: int) -> str:
    certified = run_cli(
        env, "tier0", "certify", "--artefact", str(artefact), "--input", str(pairs),
        "--since", str(since_ms), "--target", "0.95",
    )  # fmt: skip
    assert certified.returncode == 0, certified.stdout + certified.stderr
    print(f"\n{certified.stdout.strip()}")  # the figures docs/CALIBRATION.md quotes
    return certified.stdout


def _now_ms() -> int:
    return int(time.time() * 1000) + 1


async def _trained_and_certified(
    env: dict[str, str], kafka_bootstrap: str, tmp_path: Path, half: int = 180
) -> tuple[Path, dict[str, str]]:
    """The models answer 2 * half requests (six texts, numbered); tier 0 is trained on the
    first half (``trained.json``, kept uncertified) and certified on the second
    (``tier0.json``). Returns the certified artefact and the routed label per text."""
    async with running_service(env, ["cheap", "strong"]):
        await _answered(env, kafka_bootstrap, _requests("a", half))
        split_ms = _now_ms()
        await asyncio.sleep(0.01)
        await _answered(env, kafka_bootstrap, _requests("a", half, half))
    got = await collect(
        kafka_bootstrap,
        [env["ESCALATOR_RESULTS_TOPIC"]],
        lambda c: len(c.records) >= 2 * half,
    )
    routed = {r["id"]: r["label"] for r in (orjson.loads(rec.value) for rec in got.records)}
    by_text = {TEXTS[int(rid.split("-")[1]) % len(TEXTS)]: label for rid, label in routed.items()}
    pairs = _pairs(env, tmp_path)
    trained, artefact = tmp_path / "trained.json", tmp_path / "tier0.json"
    done = run_cli(
        env, "tier0", "train", "--input", str(pairs), "--until", str(split_ms),
        "--output", str(trained),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for suffix in (".json", ".npz"):
        shutil.copyfile(trained.with_suffix(suffix), artefact.with_suffix(suffix))
    _certify(env, artefact, pairs, split_ms)
    return artefact, by_text


@pytest.mark.timeout(600)
async def test_train_certify_then_the_cheap_tier_answers_with_tier0(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """Answers from the models (shadow off) make the pairs; training's window ends where the
    certification window starts; the service restarted with the certified artefact answers
    requests at tier 0 (no model call: a single decision, tier tier0, with the artefact's
    version; cost 0), each with the label the models gave the same text, and every request,
    new texts included, ends with exactly one result (new texts go to the models: the certified
    threshold is 0.99 on the emulator's keyword world, docs/CALIBRATION.md);
    at a sample rate of 0.5 some of tier 0's answers also carry the cheap model's, as shadow
    decisions (and the strong model's, exactly where the cheap tier would have escalated),
    and the results are still tier 0's."""
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0")
    results_topic, decisions_topic = (
        env["ESCALATOR_RESULTS_TOPIC"],
        env["ESCALATOR_DECISIONS_TOPIC"],
    )
    artefact, by_text = await _trained_and_certified(env, kafka_bootstrap, tmp_path)
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
    sampled = escalated = 0
    for rid, result in local.items():
        assert result["model"] == version and result["cost_usd"] == 0
        if rid.startswith("b-"):  # a text the models answered in the windows
            assert result["label"] == by_text[TEXTS[int(rid.split("-")[1]) % len(TEXTS)]]
        # One decision of tier 0's; no escalation; a sampled one also has the cheap model's
        # answer, as a shadow decision with the sample rate (measurement only), and when the
        # cheap tier would have escalated it, the strong model's too (the final routed answer).
        (only,) = [d for d in decisions[rid] if "tier0_version" in d]
        assert only["tier0_version"] == version and only["outcome"] == "accepted"
        others = {d["attempt"]["tier"]: d for d in decisions[rid] if d is not only}
        assert len(others) == len(decisions[rid]) - 1
        for d in others.values():
            assert (d["outcome"], d["shadow"], d["sample_rate"]) == ("shadow", True, 0.5)
        if others:
            cheap = others["cheap"]
            a = cheap["attempt"]
            accepted = a["valid"] and a["confidence"] >= cheap["threshold"]
            assert ("strong" in others) == (not accepted)
            sampled += 1
            escalated += "strong" in others
    print(f"\n  sampled {sampled} of {len(local)}, {escalated} asked of the strong model")
    assert 0 < sampled < len(local)
    # Texts unlike any in the windows (tier 0 is about 0.87 sure of them, below the 0.99 the
    # window certified; a threshold walked down to 0.00 answered them): the models answer.
    assert not any(k.startswith("n-") for k in local)
    model = read_model(artefact, read_manifest(artefact))
    novel_conf = [c for _, c in model.predict([orjson.loads(v)["text"] for v in novel])]
    print(f"\n  tier 0's confidence on the novel texts: max {max(novel_conf):.3f}")
    for rid in ids - set(local):
        assert results[rid][0]["tier"] in ("cheap", "strong")
        assert all("tier0_version" not in d for d in decisions[rid])


#: The drift: the first text, with words the models read as harm and tier 0 never saw. Tier 0
#: still says what it learned for the text (with near certainty); the models now say otherwise.
DRIFTED = f"{TEXTS[0]} Poison, stab, terrorist"
#: Requests per round of the drift's load (the withdrawal comes after a few rounds).
ROUND = 20
MAX_ROUNDS = 40


def _drifted(prefix: str, n: int, start: int = 0) -> list[bytes]:
    return [
        orjson.dumps({"id": f"{prefix}-{i}", "text": f"{DRIFTED} ({i})"})
        for i in range(start, start + n)
    ]


async def _active(service: Service, version: str) -> float:
    """escalator_tier0_active for ``version``, from the service's /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.health_port}/metrics") as response,
    ):
        body = await response.text()
    found = re.search(r'escalator_tier0_active\{version="' + version + r'"\} (\S+)', body)
    assert found is not None, f"no escalator_tier0_active for {version}"
    return float(found.group(1))


@pytest.mark.timeout(900)
async def test_a_drift_withdraws_tier0_and_the_withdrawal_outlives_a_restart(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """Train and certify on the models' answers; run with tier 0 (half its answers sampled)
    and check it answers the known texts. Then the drift: load in rounds until its live test
    withdraws it (escalator_tier0_active 0, never by a fixed wait); every request sent after
    that goes to the models. Restarted with the same artefact, tier 0 stays withdrawn (the
    tier-0 state topic); the models' answers after the restart certify a new artefact (from
    the same training), with which the next restart answers at tier 0 again. Every request
    of every phase ends in exactly one result."""
    env = make_env(
        kafka_bootstrap, sim_url, unique,
        ESCALATOR_SHADOW_RATE="0", ESCALATOR_TIER0_STATE_TOPIC=f"t0state-{unique}",
    )  # fmt: skip
    results_topic = env["ESCALATOR_RESULTS_TOPIC"]
    artefact, by_text = await _trained_and_certified(env, kafka_bootstrap, tmp_path)
    version = orjson.loads(artefact.read_bytes())["version"]
    run_env = {**env, "ESCALATOR_TIER0_FILE": str(artefact), "ESCALATOR_TIER0_SAMPLE_RATE": "0.5"}
    sent: list[bytes] = []
    after: list[bytes] = []  # requests sent once tier 0 was seen withdrawn

    async def send(values: list[bytes]) -> None:
        sent.extend(values)
        await _answered(env, kafka_bootstrap, values)

    async with running_service(run_env, ["cheap", "strong"]) as service:
        assert await _active(service, version) == 1.0
        await send(_requests("b", 30))
        rounds = 0
        while await _active(service, version) == 1.0:
            assert rounds < MAX_ROUNDS, f"not withdrawn after {rounds * ROUND} drifted requests"
            await send(_drifted("d", ROUND, rounds * ROUND))
            rounds += 1
        after = _requests("e", 20) + _drifted("e-d", 20)
        await send(after)
    # Restarted with the same artefact: still withdrawn, before and after a request. These
    # requests, the models' answers, are a fresh window for a new certification.
    restart_ms = _now_ms()
    await asyncio.sleep(0.01)
    again = _requests("f", 300)  # attempt 2 of the ledger spends less delta: 180 would not do
    async with running_service(run_env, ["cheap", "strong"]) as service:
        assert await _active(service, version) == 0.0
        await send(again)
        assert await _active(service, version) == 0.0
    # A new artefact: the same training, certified on the window after the restart.
    renewed = tmp_path / "renewed.json"
    for suffix in (".json", ".npz"):
        shutil.copyfile(
            tmp_path.joinpath("trained").with_suffix(suffix), renewed.with_suffix(suffix)
        )
    _certify(env, renewed, _pairs(env, tmp_path), restart_ms)
    new_version = orjson.loads(renewed.read_bytes())["version"]
    assert new_version != version
    last = _requests("g", 30)
    async with running_service(
        {**run_env, "ESCALATOR_TIER0_FILE": str(renewed)}, ["cheap", "strong"]
    ) as service:
        assert await _active(service, new_version) == 1.0
        await send(last)

    ids = {orjson.loads(v)["id"] for v in sent}
    got = await collect(
        kafka_bootstrap,
        [results_topic, env["ESCALATOR_DECISIONS_TOPIC"]],
        lambda c: ids <= set(c.results_by_id(results_topic)),
        linger_s=1.0,
    )
    results = {k: v for k, v in got.results_by_id(results_topic).items() if k in ids}
    assert {k: len(v) for k, v in results.items()} == dict.fromkeys(ids, 1)
    tier = {k: v[0]["tier"] for k, v in results.items()}
    label = {k: v[0]["label"] for k, v in results.items()}
    # Before the drift, tier 0 answered the known texts, with the models' labels.
    known = [k for k in ids if k.startswith("b-")]
    assert all(tier[k] == "tier0" for k in known)
    assert all(label[k] == by_text[TEXTS[int(k.split("-")[1]) % len(TEXTS)]] for k in known)
    # The drift: tier 0 answered drifted requests with its old label until it withdrew (what
    # the detection delay costs); after it, the models answer them with another label.
    drifted = [k for k in ids if k.startswith("d-")]
    assert any(tier[k] == "tier0" for k in drifted)
    assert all(label[k] == by_text[TEXTS[0]] for k in drifted if tier[k] == "tier0")
    assert all(label[k] != by_text[TEXTS[0]] for k in ids if k.startswith("e-d-"))
    # Everything after the withdrawal, and after the restart with the same artefact: the models.
    for group in (after, again):
        for v in group:
            assert tier[orjson.loads(v)["id"]] in ("cheap", "strong")
    no_tier0 = {orjson.loads(v)["id"] for v in after + again}
    for rec in got.on(env["ESCALATOR_DECISIONS_TOPIC"]):
        d = orjson.loads(rec.value)
        if d["id"] in no_tier0:
            assert "tier0_version" not in d
    # The new artefact answers the known texts at tier 0 again.
    assert all(tier[orjson.loads(v)["id"]] == "tier0" for v in last)
    print(
        f"\n  withdrawn after {rounds} round(s) of {ROUND} drifted requests; tier 0 answered "
        f"{sum(tier[k] == 'tier0' for k in drifted)} of the {len(drifted)} drifted ones"
    )
