"""README's "Your own data" walk-through, command by command, as processes: config, topics
create, doctor, produce (refused, then --skip-invalid), run, read results (following, by id),
a raw bad line read back from the dead letters, and SIGTERM ending run with exit 0. The
broker and the emulator are the session's (README starts its own with `escalator kafka
start` and `escalator sim`); the topics and groups are the test's own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import make_env

pytestmark = pytest.mark.integration

MINE = (
    '{"id": "t-1", "text": "Thanks, the package arrived on time and the support team was '
    'lovely."}\n'
    '{"id": "t-2", "text": "How do I reset my password? The link in the email has expired."}\n'
    "not even JSON\n"
    '{"id": "t-4"}\n'
)


@pytest.mark.timeout(600)
async def test_your_own_data_on_the_emulator(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """Each README command does what the README says it does."""
    env = {**os.environ, **make_env(kafka_bootstrap, sim_url, unique)}
    mine = tmp_path / "mine.jsonl"
    mine.write_text(MINE)

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "escalator", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    config = await asyncio.to_thread(cli, "config")
    assert config.returncode == 0 and "ok: every setting" in config.stdout, config.stderr
    assert (await asyncio.to_thread(cli, "topics", "create")).returncode == 0
    doctor = await asyncio.to_thread(cli, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    refused = await asyncio.to_thread(cli, "produce", str(mine))
    assert refused.returncode == 2 and "2 invalid line(s), nothing was produced" in refused.stderr
    produced = await asyncio.to_thread(cli, "produce", "--skip-invalid", str(mine))
    assert produced.returncode == 0, produced.stderr
    assert produced.stdout.startswith("produced 2 record(s)")
    assert [line.split(":")[1] for line in produced.stderr.splitlines()] == ["3", "4"]

    def start_run() -> subprocess.Popen[bytes]:
        with (tmp_path / "run.log").open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "escalator", "run", "--tier", "all"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    run = await asyncio.to_thread(start_run)
    try:
        follow = await asyncio.to_thread(cli, "read", "results", "--follow", "--limit", "2")
        assert follow.returncode == 0, follow.stderr
        results = [orjson.loads(line) for line in follow.stdout.splitlines()]
        assert sorted(r["id"] for r in results) == ["t-1", "t-2"]
        by_id = await asyncio.to_thread(cli, "read", "results", "--id", "t-2")
        assert [orjson.loads(x)["id"] for x in by_id.stdout.splitlines()] == ["t-2"]

        raw = await asyncio.to_thread(cli, "produce", "--raw", "-", stdin="not even JSON\n")
        assert raw.returncode == 0, raw.stderr
        dead = await asyncio.to_thread(cli, "read", "dead-letters", "--follow", "--limit", "1")
        (letter,) = [orjson.loads(line) for line in dead.stdout.splitlines()]
        assert letter["reason"] == "invalid_json" and letter["value"] == "not even JSON"
        assert letter["error"].startswith("value is not JSON")
    finally:
        run.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(run.wait, 60)
    assert code == 0, (tmp_path / "run.log").read_text()[-2000:]
