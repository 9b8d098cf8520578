"""``escalator doctor`` and the start-up model check, as a user runs them: against the
emulator, once healthy and once per misconfiguration, each failing with its one-line reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from escalator.config import load_settings
from tests.conftest import running_sim
from tests.integration.harness import make_env, setup_topics
from tests.integration.test_measure import run_cli

pytestmark = pytest.mark.integration


async def _env(bootstrap: str, sim_url: str, unique: str, **extra: str) -> dict[str, str]:
    env = make_env(bootstrap, sim_url, unique, **extra)
    await setup_topics(load_settings(env))
    return env


@pytest.mark.timeout(300)
async def test_doctor_passes_on_a_healthy_deployment(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """Every check prints ok: model, price, classify, cache, limits for both models, Kafka and
    each topic with its partitions; exit 0."""
    env = await _env(kafka_bootstrap, sim_url, unique)
    done = run_cli(env, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for model in ("claude-haiku-5-5", "claude-sonnet-5-5"):
        for check in ("model", "price", "classify", "cache", "limits"):
            assert any(line.startswith(f"ok   {check} {model}:") for line in lines), (check, lines)
    assert any(line.startswith("ok   cache claude-haiku-5-5: second call read") for line in lines)
    assert any("stop_reason end_turn" in line for line in lines)
    assert any(line.startswith(f"ok   topic req-{unique}: 4 partitions") for line in lines)
    assert "all " in lines[-1] and "checks passed" in lines[-1]


def _failed(done: object) -> tuple[str, list[str]]:
    stdout: str = done.stdout  # type: ignore[attr-defined]
    stderr: str = done.stderr  # type: ignore[attr-defined]
    assert done.returncode == 2, stdout + stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    return stderr.strip(), [line for line in stdout.splitlines() if line.startswith("FAIL")]


@pytest.mark.timeout(300)
async def test_doctor_names_an_unknown_model(
    kafka_bootstrap: str, sim_url: str, unique: str, tmp_path: Path
) -> None:
    """A model the API does not know (with a profile, so the request is made): 404, named."""
    profiles = tmp_path / "profiles.json"
    profiles.write_text('{"models": {"claude-nova-1": {"thinking": null, "max_tokens": 128}}}')
    env = await _env(
        kafka_bootstrap,
        sim_url,
        unique,
        ESCALATOR_CHEAP_MODEL="claude-nova-1",
        ESCALATOR_MODEL_PROFILES_FILE=str(profiles),
    )
    error, fails = _failed(run_cli(env, "doctor"))
    assert "model claude-nova-1" in error
    assert fails == [
        "FAIL model claude-nova-1: ESCALATOR_CHEAP_MODEL='claude-nova-1': the API does not know "
        "this model (404)"
    ]


@pytest.mark.timeout(300)
async def test_doctor_names_a_rejected_key(kafka_bootstrap: str, unique: str) -> None:
    """A wrong key: 401 on the first call, named as ANTHROPIC_API_KEY; the key is not shown."""
    with running_sim("--api-key", "the-right-key") as url:
        env = await _env(kafka_bootstrap, url, unique, ANTHROPIC_API_KEY="sk-wrong-key-123")
        done = run_cli(env, "doctor")
    _, fails = _failed(done)
    assert fails and all("ANTHROPIC_API_KEY" in line and "401" in line for line in fails)
    assert "sk-wrong-key-123" not in done.stdout + done.stderr


@pytest.mark.timeout(300)
async def test_doctor_names_a_rejected_schema(kafka_bootstrap: str, unique: str) -> None:
    """The API refusing the request's schema (a 400) fails classify with the API's words."""
    with running_sim("--fault", "schema-rejected:1.0") as url:
        env = await _env(kafka_bootstrap, url, unique)
        error, fails = _failed(run_cli(env, "doctor"))
    assert "classify claude-haiku-5-5" in error
    assert any("400" in line and "maximum, minimum are not supported" in line for line in fails)


@pytest.mark.timeout(300)
async def test_doctor_says_why_nothing_is_cached(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """Haiku 4.5 caches only prefixes of 4,096 tokens or more: the moderation prompt is below
    it, and the doctor says so in a note (the API itself returns no error); a cost to know,
    not a failure: exit 0."""
    env = await _env(kafka_bootstrap, sim_url, unique, ESCALATOR_CHEAP_MODEL="claude-haiku-4-5")
    done = run_cli(env, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    (note,) = [line for line in lines if line.startswith("note ")]
    assert note.startswith("note cache claude-haiku-4-5:")
    assert "below claude-haiku-4-5's minimum cacheable prefix of 4096" in note
    assert lines[-1].endswith("(1 note above)")


@pytest.mark.timeout(120)
def test_doctor_without_key_or_url_says_what_to_set() -> None:
    """Neither ANTHROPIC_API_KEY nor ANTHROPIC_BASE_URL: one line saying to set one, before
    anything is checked (not a header about the emulator, then a contradiction)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    done = subprocess.run(
        [sys.executable, "-m", "escalator", "doctor"],
        env={**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "escalator: error: set ANTHROPIC_API_KEY (the Claude API), or ANTHROPIC_BASE_URL to an "
        "emulator (`escalator sim` prints its URL)"
    ]


@pytest.mark.timeout(300)
async def test_run_refuses_to_start_with_a_retired_model(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    """escalator run checks each model at start-up: a retired one is one line naming the date
    of its retirement, exit 2."""
    env = await _env(kafka_bootstrap, sim_url, unique, ESCALATOR_STRONG_MODEL="claude-sonnet-4-5")
    done = run_cli(env, "run", "--tier", "strong")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "escalator: error: ESCALATOR_STRONG_MODEL='claude-sonnet-4-5' is retired (since "
        "2026-11-30, Model deprecations): requests naming it fail; choose a current model"
    )
