"""Request profiles per model: dated snapshots, retired models, the profiles file, max_tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalator.errors import ConfigError
from escalator.model.profiles import load_profiles
from escalator.model.task import load_task

TASK = load_task(None)


def test_profiles_match_dated_snapshots_and_unknown_models_are_a_startup_error() -> None:
    """claude-haiku-4-5-20251001 uses the claude-haiku-4-5 profile; an unknown id names the
    variable and the file that can describe it."""
    table = load_profiles(None)
    assert table.require("claude-haiku-4-5-20251001", "V") == table.require("claude-haiku-4-5", "V")
    with pytest.raises(ConfigError, match=r"ESCALATOR_CHEAP_MODEL='claude-nova-1'.*PROFILES_FILE"):
        table.require("claude-nova-1", "ESCALATOR_CHEAP_MODEL")


def test_retired_models_are_a_startup_error_naming_the_date() -> None:
    """claude-sonnet-4-5 (and its dated snapshot) retired on 2026-11-30: one line naming the
    variable and the date, before any API call; Fable 5.2 has a profile that always thinks."""
    table = load_profiles(None)
    for model in ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929"):
        with pytest.raises(ConfigError, match=rf"V='{model}' is retired \(since 2026-11-30"):
            table.require(model, "V")
    fable = table.require("claude-fable-5-2", "V")
    assert fable.always_thinks and fable.thinking is None and fable.max_tokens == 4096


def test_a_profiles_file_adds_models_and_is_validated(tmp_path: Path) -> None:
    """A user-supplied profile is used; a bad one is one line naming the file."""
    path = tmp_path / "p.json"
    path.write_text('{"models": {"claude-nova-1": {"thinking": "disabled", "max_tokens": 256}}}')
    profile = load_profiles(path).require("claude-nova-1", "V")
    assert profile.thinking == "disabled" and profile.max_tokens == 256
    assert profile.request_fields() == {"max_tokens": 256, "thinking": {"type": "disabled"}}
    path.write_text('{"models": {"m": {"thinking": "sometimes", "max_tokens": 256}}}')
    with pytest.raises(ConfigError, match=r"ESCALATOR_MODEL_PROFILES_FILE=.*thinking"):
        load_profiles(path)


def test_a_max_tokens_override_must_leave_room_for_models_that_always_think() -> None:
    """ESCALATOR_MODEL_MAX_TOKENS=64 with Opus 5.5 (it always thinks) is a start-up error;
    with Haiku 5.5 (thinking off) it is taken."""
    from escalator.config import load_settings
    from escalator.model.stack import model_profiles
    from escalator.tiers.table import tier_table

    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "ESCALATOR_MODEL_MAX_TOKENS": "64"}
    settings = load_settings(env)
    assert model_profiles(settings, [tier_table(settings)["cheap"].model])["cheap"].max_tokens == 64
    env["ESCALATOR_STRONG_MODEL"] = "claude-opus-5-5"
    settings = load_settings(env)
    with pytest.raises(ConfigError, match="ESCALATOR_MODEL_MAX_TOKENS=64 leaves no room"):
        model_profiles(settings, [tier_table(settings)["strong"].model])
