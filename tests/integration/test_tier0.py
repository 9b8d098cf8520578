"""Tier 0's training data from the real topics: the service answers requests on the real
broker (the emulator's models), ``escalator tier0 pairs`` joins the requests topic with the
results topic without a consumer group, and ``tier0 train`` fits on what it wrote."""

from __future__ import annotations

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
