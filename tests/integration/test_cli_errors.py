"""The CLI's failures as a user meets them, in a process: one line on stderr, exit code 2, no
traceback and no asyncio noise at exit ("Unclosed AIOKafka...", "Task exception was never
retrieved"). With nothing listening where the broker should be, for every command that needs
Kafka; with a busy or out-of-range port; with a bad log level (checked before logging is
configured); and, on the real broker, for topics that do not exist. The in-process table of
every setting and flag is tests/unit/cli/test_main.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from escalator.config import load_settings
from escalator_dev.kafka_local import free_port
from tests.integration.harness import make_env, setup_topics

pytestmark = pytest.mark.integration

VARIABLE = re.compile(r"^(ESCALATOR|KAFKA|ANTHROPIC)_[A-Z0-9_]+$")
UNREACHABLE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
REFUSED = "nothing listens at 127.0.0.1:9"


@dataclass(frozen=True)
class Run:
    argv: list[str]
    expect: str  # a substring of the one line
    env: dict[str, str] = field(default_factory=dict)


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``escalator ARGV`` with only ``env`` of our variables (none from the outer shell)."""
    outer = {k: v for k, v in os.environ.items() if not VARIABLE.match(k)}
    return subprocess.run(
        [sys.executable, "-m", "escalator", *argv],
        env={**outer, "ESCALATOR_METRICS_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str | None:
    """The one stderr line of a failed command (exit 2), else None."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != 2 or len(lines) != 1 or not lines[0].startswith("escalator"):
        return None
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.timeout(600)
def test_without_a_broker_every_command_fails_in_one_line(tmp_path: Path, busy_port: int) -> None:
    """Nothing listens at the broker's address: each command that needs Kafka says so in one
    line (the same line as run's), exit 2; bad ports and a bad log level likewise."""
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"id": "a", "text": "ok"}\n')
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("")
    reviewers = tmp_path / "reviewers.txt"
    reviewers.write_text("")
    cases = [
        Run(["--version"], "ESCALATOR_LOG_LEVEL", {"ESCALATOR_LOG_LEVEL": "LOUD"}),
        Run(["run", "--tier", "cheap"], "ESCALATOR_LOG_LEVEL", {"ESCALATOR_LOG_LEVEL": "LOUD"}),
        Run(
            ["run", "--tier", "cheap"],
            "ESCALATOR_METRICS_PORT",
            {"ESCALATOR_METRICS_PORT": "70000"},
        ),
        Run(
            ["run", "--tier", "cheap"],
            "already in use",
            {"ESCALATOR_METRICS_PORT": str(busy_port)},
        ),
        Run(
            ["run", "--tier", "cheap"],
            "127.0.0.1:99999",
            {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"},
        ),
        Run(["run", "--tier", "cheap"], REFUSED),
        Run(["run", "--tier", "strong"], REFUSED),
        Run(["topics", "create"], REFUSED),
        Run(["produce", str(requests)], REFUSED),
        Run(["export"], REFUSED),
        Run(["calibrate"], REFUSED),
        Run(["report"], REFUSED),
        Run(["read", "results"], REFUSED),
        Run(["read", "dead-letters"], REFUSED),
        Run(["tier0", "pairs", "--output", str(tmp_path / "pairs.jsonl")], REFUSED),
        Run(["dead-letters", "summary"], REFUSED),
        Run(["dead-letters", "replay", "--all"], REFUSED),
        Run(["doctor"], "check(s) failed"),
        Run(
            ["review", "serve"],
            "ESCALATOR_REVIEW_PASSWORDS_FILE",
            {"ESCALATOR_REVIEW_PASSWORDS_FILE": str(reviewers)},
        ),
        Run(["review", "serve"], "ESCALATOR_REVIEW_TOKENS_FILE"),
        Run(["sim", "--port", str(busy_port), "--host", "0.0.0.0"], "already in use"),
        Run(["calibrate", "--input", str(decisions)], "no cheap-tier decisions"),
    ]

    def attempt(case: Run) -> tuple[Run, subprocess.CompletedProcess[str]]:
        return case, run(case.argv, {**UNREACHABLE, **case.env})

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, cases))
    failures = [
        (case.argv, case.env, done.returncode, done.stderr[-800:])
        for case, done in results
        if (line := one_line(done)) is None or case.expect not in line
    ]
    assert failures == []


@pytest.mark.timeout(300)
async def test_topics_that_do_not_exist_are_one_line(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """On the real broker: producing to, or reading, a topic that does not exist is one line
    naming it (aiokafka alone waits a minute for it, then times out)."""
    env = make_env(kafka_bootstrap, sim_url, unique)
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"id": "a", "text": "ok"}\n')
    produced = await asyncio.to_thread(run, ["produce", str(requests)], env)
    assert (line := one_line(produced)) is not None, produced.stderr
    assert f"req-{unique}" in line and "does not exist" in line
    read = await asyncio.to_thread(run, ["read", "results"], env)
    assert (line := one_line(read)) is not None, read.stderr
    assert f"res-{unique}" in line and "does not exist" in line
    await setup_topics(load_settings(env))
    done = await asyncio.to_thread(run, ["produce", str(requests)], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"produced 1 record(s) to req-{unique}"


@pytest.mark.timeout(300)
async def test_an_api_url_where_nothing_answers_stops_run_at_start_up(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """ANTHROPIC_BASE_URL where nothing listens, or where something that is not the API
    answers: `run` exits 2 at start-up with one line naming the variable, instead of starting
    and failing only when traffic arrives."""
    env = make_env(kafka_bootstrap, sim_url, unique)
    await setup_topics(load_settings(env))
    nothing = await asyncio.to_thread(
        run, ["run", "--tier", "cheap"], {**env, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
    )
    assert (line := one_line(nothing)) is not None, nothing.stderr[-2000:]
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:9: nothing answers there" in line

    async def not_found(_: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>Not Found</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        other = await asyncio.to_thread(
            run,
            ["run", "--tier", "cheap"],
            {**env, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"},
        )
    finally:
        await runner.cleanup()
    assert (line := one_line(other)) is not None, other.stderr[-2000:]
    assert line.startswith("escalator: error: ANTHROPIC_BASE_URL:") and "404" in line


@pytest.mark.timeout(300)
async def test_run_waits_quietly_for_missing_topics_then_starts(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """`run` before its topics exist: not ready with the reason, one log line (not a dozen a
    second), and it starts by itself once they are created; SIGTERM ends it with exit 0."""
    port = free_port()
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_METRICS_PORT=str(port))
    log_path = tmp_path / "run.log"

    def start() -> subprocess.Popen[bytes]:
        outer = {k: v for k, v in os.environ.items() if not VARIABLE.match(k)}
        with log_path.open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "escalator", "run", "--tier", "cheap"],
                env={**outer, **env},
                stdout=log,
                stderr=log,
            )

    proc = await asyncio.to_thread(start)
    try:
        body = await _readyz_until(port, lambda b: b["tiers"][0]["held"] == "topics_missing")
        assert f"req-{unique}" in body["tiers"][0]["message"]
        await asyncio.sleep(10)  # aiokafka logged about 13 lines a second here before
        lines = log_path.read_text().splitlines()
        assert sum('"event":"topics_missing"' in line for line in lines) == 1
        assert len(lines) < 15, lines
        await setup_topics(load_settings(env))
        await _readyz_until(port, lambda b: b["ready"])
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, log_path.read_text()[-2000:]
    assert "Traceback" not in log_path.read_text()


async def _readyz_until(port: int, check: Any, limit_s: float = 120) -> dict[str, Any]:
    """Poll /readyz until ``check(body)`` holds (the deadline is against a hang)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    body: dict[str, Any] = await response.json()
                if check(body):
                    return body
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise AssertionError("/readyz never said what was expected")
