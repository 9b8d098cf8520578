"""Measure first, end to end: shadow sampling, the decisions log, calibrate, then run with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import collect, make_env, produce, requests, running_service
from tests.integration.harness import validator as schema_validator
from tests.integration.test_pipeline import TEXTS

pytestmark = pytest.mark.integration


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "escalator", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.timeout(300)
async def test_shadow_calibrate_then_run_with_the_new_thresholds(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """p=1: one result per id, both answers logged per id; calibrate certifies (margin 1:
    any certified threshold); run uses the new version."""
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="1.0")
    n = 120
    values = [
        orjson.dumps(
            {
                "id": f"m-{i}",
                "text": TEXTS[i % len(TEXTS)],
                "metadata": {"gold_label": "safe" if i % 2 else "unsafe"},
            }
        )
        for i in range(n)
    ]
    async with running_service(env, ["cheap", "strong"]):
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], values)
        results = await collect(
            kafka_bootstrap, [env["ESCALATOR_RESULTS_TOPIC"]], lambda c: len(c.records) >= n
        )
        # Every id gets a cheap decision and a strong one (escalated or shadow).
        decisions = await collect(
            kafka_bootstrap,
            [env["ESCALATOR_DECISIONS_TOPIC"]],
            lambda c: len(c.records) >= 2 * n,
            linger_s=1.0,
        )
    by_id = results.results_by_id(env["ESCALATOR_RESULTS_TOPIC"])
    assert sorted(by_id) == sorted(f"m-{i}" for i in range(n))
    assert all(len(v) == 1 for v in by_id.values()), "shadow answers must never reach results"

    check = schema_validator("decision.v1.json")
    tiers: dict[str, set[str]] = {}
    shadows = 0
    for record in decisions.records:
        value = orjson.loads(record.value)
        check.validate(value)
        tiers.setdefault(value["id"], set()).add(value["attempt"]["tier"])
        shadows += value["shadow"]
        if value["attempt"]["tier"] == "strong":
            assert value["sample_rate"] == 1.0
        assert value["gold_label"] in ("safe", "unsafe")
    assert all(t == {"cheap", "strong"} for t in tiers.values()) and len(tiers) == n
    accepted = sum(1 for v in by_id.values() if not v[0]["escalated"])
    assert shadows == accepted > 0

    # export -> calibrate from the file -> run with the threshold file.
    exported = tmp_path / "decisions.jsonl"
    out = run_cli(env, "export", "--output", str(exported))
    assert out.returncode == 0, out.stderr
    assert len(exported.read_text().splitlines()) == len(decisions.records)
    thresholds = tmp_path / "thresholds.json"
    plot = tmp_path / "plot.png"
    cal = run_cli(
        env,
        "calibrate",
        "--input",
        str(exported),
        "--target",
        "0.9",
        "--margin",
        "1",
        "--output",
        str(thresholds),
        "--plot",
        str(plot),
    )
    assert cal.returncode == 0, cal.stdout + cal.stderr
    assert "<- chosen" in cal.stdout and "oracle" in cal.stdout
    doc = orjson.loads(thresholds.read_bytes())
    assert doc["version"].startswith("cal-")
    # Certified, on a recorded window, by the stated procedure; the attempt is in the ledger.
    assert doc["status"] == "certified" and doc["procedure"]["attempt"] == 1
    assert doc["estimates"]["agreement_with_strong"]["lower_bound"] >= 0.9
    assert doc["window"]["first_ts_ms"] <= doc["window"]["last_ts_ms"]
    ledger = (tmp_path / "calibration-ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 1 and orjson.loads(ledger[0])["status"] == "certified"
    assert doc["models"] == {"cheap": "claude-haiku-5-5", "strong": "claude-sonnet-5-5"}
    assert doc["dataset"]["requests"] == n and doc["dataset"]["gold_labels"] == n
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = run_cli(env, "report", "--json", "--monthly-volume", "1000000")
    assert report.returncode == 0, report.stderr
    spend = orjson.loads(report.stdout)
    assert spend["requests"] == n and spend["shadow_usd"] > 0
    assert spend["all_strong_usd"] > spend["actual_usd"] > 0

    env2 = {
        **env,
        "ESCALATOR_THRESHOLDS_FILE": str(thresholds),
        "ESCALATOR_SHADOW_RATE": "0",
        "ESCALATOR_RESULTS_TOPIC": f"res2-{unique}",
        "ESCALATOR_REQUESTS_TOPIC": f"req2-{unique}",
    }
    async with running_service(env2, ["cheap", "strong"]) as service:
        # The calibrated escalation rate is exported, for the drift alert to compare against.
        registry = service.metrics.registry
        exported_rate = [
            registry.get_sample_value(
                "escalator_calibrated_escalation_rate", {"bound": b, "version": doc["version"]}
            )
            for b in ("low", "expected", "high")
        ]
        assert exported_rate == doc["estimates"]["escalation_rate"]
        await produce(
            kafka_bootstrap, env2["ESCALATOR_REQUESTS_TOPIC"], requests(10, "after", TEXTS)
        )
        after = await collect(
            kafka_bootstrap, [env2["ESCALATOR_RESULTS_TOPIC"]], lambda c: len(c.records) >= 10
        )
        new_decisions = await collect(
            kafka_bootstrap,
            [env["ESCALATOR_DECISIONS_TOPIC"]],
            lambda c: sum(orjson.loads(r.value)["id"].startswith("after") for r in c.records) >= 10,
        )
        # The file's live tests: the cheap tier tests its confidences against the window's
        # histogram; with no shadow sampling the strong tier cannot test the agreement.
        tested = registry.get_sample_value(
            "escalator_monitor_observations_total", {"monitor": "confidence", "result": "tested"}
        )
        assert tested is not None and tested >= 10
        for monitor in ("confidence", "agreement"):
            labels = {"monitor": monitor, "version": doc["version"]}
            value = registry.get_sample_value("escalator_monitor_rejected", labels)
            assert value == (0.0 if monitor == "confidence" else None), monitor
    assert {orjson.loads(r.value)["threshold_version"] for r in after.records} == {doc["version"]}
    assert {
        orjson.loads(r.value)["threshold_version"]
        for r in new_decisions.records
        if orjson.loads(r.value)["id"].startswith("after")
    } == {doc["version"]}
