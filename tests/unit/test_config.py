"""Configuration is validated at start-up; each error names the offending variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from escalator.config import load_settings
from escalator.errors import ConfigError

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1"}


def test_defaults() -> None:
    """Documented defaults: threshold 0.7, 64 in flight, 25 s grace, the default topics."""
    s = load_settings(BASE)
    assert s.routing.threshold == 0.7
    assert s.pipeline.max_in_flight == 64
    assert s.pipeline.shutdown_grace_s == 25.0
    assert s.topics.requests == "escalator.requests"
    assert s.pipeline.cheap_group == "escalator-cheap"
    assert s.model.cheap_model == "claude-haiku-5-5"
    assert s.model.strong_model == "claude-sonnet-5-5"
    assert s.model.simulated
    assert s.admission.enabled and s.admission.target == 0.95 and not s.admission.caps


def test_admission_settings() -> None:
    """ESCALATOR_ADMISSION=off selects AIMD only; caps are per configured model."""
    s = load_settings(
        {
            **BASE,
            "ESCALATOR_ADMISSION": "off",
            "ESCALATOR_ADMISSION_TARGET": "0.9",
            "ESCALATOR_ADMISSION_CAP": "claude-haiku-5-5=600:200000:80000, "
            "claude-sonnet-5-5=100:50000:10000",
        }
    )
    assert not s.admission.enabled and s.admission.target == 0.9
    assert s.admission.caps == {
        "claude-haiku-5-5": (600, 200_000, 80_000),
        "claude-sonnet-5-5": (100, 50_000, 10_000),
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KAFKA_BOOTSTRAP_SERVERS", "no-port"),
        ("ESCALATOR_THRESHOLD", "1.5"),
        ("ESCALATOR_THRESHOLD", "high"),
        ("ESCALATOR_MAX_IN_FLIGHT", "0"),
        ("ESCALATOR_MAX_IN_FLIGHT", "many"),
        ("ESCALATOR_LABEL_THRESHOLDS", "safe:0.9"),
        ("ESCALATOR_LABEL_THRESHOLDS", "safe=2"),
        ("ESCALATOR_KAFKA_SECURITY_PROTOCOL", "SASL_TLS"),
        ("ESCALATOR_REQUESTS_TOPIC", "bad topic!"),
        ("ESCALATOR_TASK_FILE", "/no/such/file.json"),
        ("ANTHROPIC_BASE_URL", "ftp://x"),
        ("ESCALATOR_LOG_TEXT", "maybe"),
        ("ESCALATOR_SHUTDOWN_GRACE_S", "-1"),
        ("ESCALATOR_ADMISSION", "sometimes"),
        ("ESCALATOR_ADMISSION_TARGET", "1.2"),
        ("ESCALATOR_ADMISSION_TARGET", "0.1"),
        ("ESCALATOR_ADMISSION_CAP", "claude-haiku-5-5=600:200000"),
        ("ESCALATOR_ADMISSION_CAP", "claude-haiku-5-5=600:0:100"),
        ("ESCALATOR_ADMISSION_CAP", "claude-opus-5-5=600:200000:80000"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    """A bad value raises ConfigError whose message starts with the variable's name."""
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, name: value})
    assert name in str(info.value)


def test_sasl_needs_credentials_and_hides_the_password() -> None:
    """SASL without a username is refused; the password never shows in repr."""
    with pytest.raises(ConfigError, match="ESCALATOR_KAFKA_SASL_USERNAME"):
        load_settings({**BASE, "ESCALATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    s = load_settings(
        {
            **BASE,
            "ESCALATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ESCALATOR_KAFKA_SASL_USERNAME": "svc",
            "ESCALATOR_KAFKA_SASL_PASSWORD": "hunter2-secret",
            "ANTHROPIC_API_KEY": "sk-test-sentinel",
        }
    )
    assert "hunter2-secret" not in repr(s)
    assert "sk-test-sentinel" not in repr(s)
    assert s.kafka.sasl_mechanism == "SCRAM-SHA-512"


def test_cli_reports_bad_config_in_one_line() -> None:
    """`escalator run` with a bad variable prints one line naming it and exits 2."""
    env = {"PATH": "/usr/bin:/bin", **BASE, "ESCALATOR_THRESHOLD": "lots"}
    proc = subprocess.run(
        [sys.executable, "-m", "escalator", "run", "--tier", "cheap"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ESCALATOR_THRESHOLD" in lines[0] and "Traceback" not in proc.stderr


def test_cli_rejects_bad_produce_file(tmp_path: object) -> None:
    """`escalator produce` names the first bad line and produces nothing."""
    from pathlib import Path

    path = Path(str(tmp_path)) / "in.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n{"id": "b"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "escalator", "produce", str(path)],
        env={"PATH": "/usr/bin:/bin", **BASE},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{path}:2: missing_field" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
