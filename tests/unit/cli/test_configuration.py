"""``escalator config`` (cli/configuration.py): every setting with its value and source,
secrets hidden, variables that no setting reads pointed out, and the notes on what the process
would run with. A bad value of each setting, one line and exit 2: test_main.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalator.cli import configuration
from escalator.cli.main import main
from tests.unit.cli.test_main import SASL, VALID_HASH, clean_env  # noqa: F401 (a fixture)


def test_config_shows_sources_and_hides_secrets(
    clean_env: pytest.MonkeyPatch,  # noqa: F811 (the imported fixture)
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each setting with its value and source; the API key and SASL password never shown, nor
    the credentials in a proxy URL; a misspelt variable is pointed out."""
    clean_env.setenv("ESCALATOR_METRICS_PORT", "0")
    clean_env.setenv("ANTHROPIC_API_KEY", "sk-ant-sentinel-key")
    clean_env.setenv("ANTHROPIC_BASE_URL", "https://user:tok-sentinel@proxy.example:8443")
    clean_env.setenv("ESCALATOR_TRESHOLD", "0.8")
    for name, value in SASL.items():
        clean_env.setenv(name, value)
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "sk-ant-sentinel" not in out and "secret-password" not in out
    assert "tok-sentinel" not in out and "https://***@proxy.example:8443" in out
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line[:3] == "  E"}
    assert rows["ESCALATOR_METRICS_PORT"] == "environment"
    assert rows["ESCALATOR_THRESHOLD"] == "default"
    assert "ESCALATOR_TRESHOLD (did you mean ESCALATOR_THRESHOLD?)" in out


def _config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["config", *argv]) == 0
    return capsys.readouterr().out


def test_the_notes_say_what_the_tiers_would_run_with(
    clean_env: pytest.MonkeyPatch,  # noqa: F811 (the imported fixture)
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``run --tier all``: the command named first; notes on the task (name, version, labels),
    the thresholds in force, and, with no API key, where the model calls would go."""
    clean_env.setenv("ESCALATOR_METRICS_PORT", "0")
    clean_env.setenv("ESCALATOR_THRESHOLD", "0.75")
    out = _config([], capsys)
    assert (
        out.splitlines()[0] == "escalator config: what `escalator run --tier all` would start with"
    )
    notes = out.split("\nnotes:\n")[1].split("\n\n")[0].splitlines()
    assert notes[0].startswith("  task 'moderation' (version 1): labels safe, unsafe, review-")
    assert notes[1].startswith("  thresholds ") and notes[1].endswith(": escalate below 0.75")
    assert notes[2] == "  no ANTHROPIC_API_KEY: model calls go to http://127.0.0.1:9 (simulated)"
    clean_env.setenv("ANTHROPIC_API_KEY", "sk-ant-sentinel-key")
    clean_env.delenv("ANTHROPIC_BASE_URL")
    assert "(simulated)" not in _config(["--tier", "cheap"], capsys)


def test_for_the_review_console_it_checks_its_credentials_not_the_model_side(
    clean_env: pytest.MonkeyPatch,  # noqa: F811 (the imported fixture)
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """--tier review: names ``review serve``, loads the passwords file and checks the console's
    port; no task or thresholds notes (the console calls no model)."""
    passwords = tmp_path / "passwords"
    passwords.write_text(f"alice:{VALID_HASH}\n")
    clean_env.setenv("ESCALATOR_REVIEW_PASSWORDS_FILE", str(passwords))
    clean_env.setenv("ESCALATOR_METRICS_PORT", "0")
    clean_env.setenv("ESCALATOR_REVIEW_PORT", "0")
    out = _config(["--tier", "review"], capsys)
    assert out.splitlines()[0] == "escalator config: what `escalator review serve` would start with"
    assert "notes:" not in out and "task " not in out
    assert out.rstrip().splitlines()[-1].startswith("ok:")
    passwords.write_text("alice:not-a-hash\n")
    assert main(["config", "--tier", "review"]) == 2
    assert "ESCALATOR_REVIEW_PASSWORDS_FILE" in capsys.readouterr().err


def test_variables_read_by_the_tools_and_tests_are_not_called_misspelt(
    clean_env: pytest.MonkeyPatch,  # noqa: F811 (the imported fixture)
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ESCALATOR_* variables of the development tools (NOT_SETTINGS) are not listed as unread;
    one that nothing reads is, and with none of those the section is left out."""
    clean_env.setenv("ESCALATOR_METRICS_PORT", "0")
    for name in configuration.NOT_SETTINGS:
        clean_env.setenv(name, "1")
    assert "set, but not read" not in _config([], capsys)
    clean_env.setenv("ESCALATOR_NOTHING_READS_THIS", "1")
    out = _config([], capsys)
    assert "set, but not read by any setting (misspelt?):\n  ESCALATOR_NOTHING_READS_THIS" in out
