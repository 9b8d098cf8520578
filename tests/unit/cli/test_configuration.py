"""``escalator config`` (cli/configuration.py): every setting with its value and source,
secrets hidden, variables that no setting reads pointed out, and the notes on what the process
would run with. A bad value of each setting, one line and exit 2: test_main.py."""

from __future__ import annotations

import pytest

from escalator.cli.main import main
from tests.unit.cli.test_main import SASL, clean_env  # noqa: F401 (a fixture)


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
