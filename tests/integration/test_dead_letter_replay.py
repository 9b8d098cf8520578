"""`escalator dead-letters summary|replay` against the real broker: dead letters counted by
reason; after the cause is fixed, the chosen ones go back to their source topic and end as
results, traceable to the dead letter they came from."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from escalator.config import load_settings
from tests.integration.harness import collect, make_env, produce, running_service
from tests.integration.test_measure import run_cli

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
async def test_dead_letters_are_summarised_then_replayed_after_the_fix(
    kafka_bootstrap: str, sim_url: str, unique: str
) -> None:
    env = make_env(kafka_bootstrap, sim_url, unique, ESCALATOR_MAX_TEXT_CHARS="40")
    settings = load_settings(env)
    long_ones = [orjson.dumps({"id": f"{unique}-long-{i}", "text": "word " * 20}) for i in range(3)]
    garbage = [b"{not json", b"\xff\xfe"]
    async with running_service(env, ["cheap", "strong"]):
        await produce(
            kafka_bootstrap,
            settings.topics.requests,
            long_ones + garbage,
            headers=[("traceparent", b"00-abc-def-01")],
        )
        await collect(
            kafka_bootstrap, [settings.topics.dead_letter], lambda c: len(c.records) >= 5, 90
        )

    summary = await asyncio.to_thread(run_cli, env, "dead-letters", "summary")
    assert summary.returncode == 0, summary.stderr
    assert "5 records" in summary.stdout
    assert "text_too_long: 3" in summary.stdout and "invalid_json: 1" in summary.stdout
    (too_long,) = [x for x in summary.stdout.splitlines() if "text_too_long: 3" in x]
    assert "failed 20" in too_long and "last error: 'text' has 100 chars, limit 40" in too_long

    # Each dead letter, with its id, time and error, as JSON lines.
    listed = await asyncio.to_thread(run_cli, env, "read", "dead-letters")
    assert listed.returncode == 0, listed.stderr
    rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["reason"] for r in rows) == [
        "invalid_json",
        "invalid_utf8",
        *["text_too_long"] * 3,
    ]
    long_rows = [r for r in rows if r["reason"] == "text_too_long"]
    assert sorted(r["id"] for r in long_rows) == [f"{unique}-long-{i}" for i in range(3)]
    assert all(r["error"] and r["failed_at"] and r["source"] for r in rows)
    assert all(r["source"].startswith(settings.topics.requests + "/") for r in rows)
    (utf8,) = [r for r in rows if r["reason"] == "invalid_utf8"]
    assert utf8["value_base64"] == "//4="  # the bytes as they came, not mangled

    # Replaying malformed records would dead-letter them again: refused, and left out of --all.
    malformed = await asyncio.to_thread(
        run_cli, env, "dead-letters", "replay", "--reason", "invalid_utf8"
    )
    assert malformed.returncode == 2 and len(malformed.stderr.strip().splitlines()) == 1
    assert "malformed" in malformed.stderr and "--include-malformed" in malformed.stderr
    dry_all = await asyncio.to_thread(run_cli, env, "dead-letters", "replay", "--all", "--dry-run")
    assert dry_all.returncode == 0, dry_all.stderr
    assert "not replayed (malformed records" in dry_all.stdout
    assert "invalid_json 1, invalid_utf8 1" in dry_all.stdout

    refused = await asyncio.to_thread(run_cli, env, "dead-letters", "replay")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--reason" in refused.stderr

    dry = await asyncio.to_thread(
        run_cli, env, "dead-letters", "replay", "--reason", "text_too_long", "--dry-run"
    )
    assert dry.returncode == 0 and "dry run" in dry.stdout

    fixed = {**env, "ESCALATOR_MAX_TEXT_CHARS": "20000"}
    replay = await asyncio.to_thread(
        run_cli, fixed, "dead-letters", "replay", "--reason", "text_too_long"
    )
    assert replay.returncode == 0, replay.stderr
    assert "text_too_long: 3, replayed 3" in replay.stdout
    async with running_service(fixed, ["cheap", "strong"]):
        got = await collect(
            kafka_bootstrap,
            [settings.topics.results],
            lambda c: len(c.results_by_id(settings.topics.results)) >= 3,
            120,
        )
    by_id = got.results_by_id(settings.topics.results)
    assert sorted(by_id) == sorted(f"{unique}-long-{i}" for i in range(3))
    for record in got.on(settings.topics.results):
        headers = dict(record.headers)
        assert headers["traceparent"] == b"00-abc-def-01"  # the original headers came back
        assert headers["x-escalator-replay-of"].startswith(settings.topics.dead_letter.encode())
    # The dry run and the refused run published nothing: exactly three requests were replayed.
    requests_now = await collect(
        kafka_bootstrap, [settings.topics.requests], lambda c: len(c.records) >= 8, 20, linger_s=2
    )
    assert len(requests_now.records) == 8
