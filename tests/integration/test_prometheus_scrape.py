"""A real Prometheus server (Debian's package) scrapes a running Escalator on loopback, with
the alert rules from deploy/prometheus loaded. Asserted through Prometheus's HTTP API."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from escalator_dev.kafka_local import free_port
from tests.integration.harness import make_env, produce, requests, running_service, wait_for
from tests.integration.test_pipeline import TEXTS

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy/prometheus/rules.yml"


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus is not installed: run `make tools` (Debian package prometheus)")
    return path


def _start_prometheus(
    binary: str, workdir: Path, target: str
) -> tuple[subprocess.Popen[bytes], str]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "escalator", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return proc, f"http://{address}"


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


async def _api(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params) as response:
        body = await response.json()
        assert body["status"] == "success", body
        return body["data"]


@pytest.mark.timeout(240)
async def test_prometheus_scrapes_the_service_and_loads_the_rules(
    kafka_bootstrap: str,
    sim_url: str,
    unique: str,
    tmp_path: Path,
    prometheus_binary: str,
    stop_later: list[subprocess.Popen[bytes]],
) -> None:
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_SHADOW_RATE="0")
    async with running_service(env, ["cheap", "strong"]) as service:
        proc, base = _start_prometheus(
            prometheus_binary, tmp_path, f"127.0.0.1:{service.health_port}"
        )
        stop_later.append(proc)
        await produce(kafka_bootstrap, env["ESCALATOR_REQUESTS_TOPIC"], requests(20, unique, TEXTS))
        async with aiohttp.ClientSession() as session:

            async def decisions_scraped() -> bool:
                try:
                    data = await _api(
                        session,
                        f"{base}/api/v1/query",
                        query='sum(escalator_decisions_total{job="escalator"})',
                    )
                except aiohttp.ClientError:
                    return False  # not listening yet
                return bool(data["result"]) and float(data["result"][0]["value"][1]) >= 20

            await wait_for(decisions_scraped, timeout_s=120, interval_s=1)

            names = await _api(session, f"{base}/api/v1/label/__name__/values")
            ours = {n for n in names if n.startswith("escalator_")}
            for expected in (
                "escalator_requests_total",
                "escalator_decisions_total",
                "escalator_cost_usd_total",
                "escalator_processing_seconds_bucket",
                "escalator_commit_lag",
                "escalator_in_flight_limit",
                "escalator_circuit_open",
                "escalator_ready",
            ):
                assert expected in ours, (expected, sorted(ours))

            targets = await _api(session, f"{base}/api/v1/targets")
            (target,) = targets["activeTargets"]
            assert target["health"] == "up", target

            groups = (await _api(session, f"{base}/api/v1/rules"))["groups"]
            rules = {r["name"]: r for g in groups for r in g["rules"]}
            in_file = yaml.safe_load(RULES.read_text())["groups"]
            assert {r.get("alert") or r["record"] for g in in_file for r in g["rules"]} == set(
                rules
            )
            assert all(r["health"] != "err" for r in rules.values()), [
                (n, r.get("lastError")) for n, r in rules.items() if r["health"] == "err"
            ]

            # A recording rule evaluates over the scraped series (rate() needs two samples).
            async def recorded() -> bool:
                data = await _api(
                    session, f"{base}/api/v1/query", query="escalator:cost_usd:rate1h"
                )
                return bool(data["result"])

            await wait_for(recorded, timeout_s=60, interval_s=1)
    assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
