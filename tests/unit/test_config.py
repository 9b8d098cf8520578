"""Configuration is validated at start-up; each error names the offending variable."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
from typing import Any, get_args

import pytest

from escalator import config
from escalator.config import PipelineSettings, Settings, Topics, load_settings
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
        ("ESCALATOR_PROCESSING_GUARANTEE", "at_most_once"),
        ("ESCALATOR_MODEL_MAX_TOKENS", "8"),
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


def _differences_from_field_defaults(obj: Any, path: str = "") -> tuple[list[str], int]:
    """Fields of ``obj`` (recursively) whose value is not the dataclass field's default; and
    how many fields with a default were compared."""
    out: list[str] = []
    compared = 0
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            sub, n = _differences_from_field_defaults(value, f"{path}{f.name}.")
            out += sub
            compared += n
            continue
        if f.default is not dataclasses.MISSING:
            expected = f.default
        elif f.default_factory is not dataclasses.MISSING:
            expected = f.default_factory()
        else:
            continue
        compared += 1
        if value != expected:
            out.append(
                f"{path}{f.name}: load_settings gives {value!r}, the field says {expected!r}"
            )
    return out, compared


def test_with_no_variables_every_setting_is_its_fields_default() -> None:
    """load_settings({}) equals the dataclass defaults for every field that has one: a default
    written again in load_settings cannot drift from the field's."""
    differences, compared = _differences_from_field_defaults(load_settings({}, require_kafka=False))
    assert differences == []
    assert compared >= 50  # the walk saw the sections, not just the top level


def _load_settings_tree() -> ast.Module:
    """The functions that read the environment for load_settings: ``_load`` and the readers
    it delegates to (``_log_level``)."""
    tree = ast.parse(inspect.getsource(config))
    found = [
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("_load", "_log_level")
    ]
    assert len(found) == 2
    return ast.Module(body=list(found), type_ignores=[])


def test_load_settings_writes_no_default_of_its_own() -> None:
    """In load_settings no default handed to the environment reader (``env.text(NAME,
    DEFAULT)``, ``env.integer``...) is, or contains, a literal; nor is a literal handed to a
    settings class. Defaults are read from the fields (bounds and choices may be literals)."""
    readers = {"text", "integer", "number", "flag", "choice", "get"}
    classes = {c.__name__ for c in _settings_classes()}
    found: list[str] = []
    calls = 0
    for node in ast.walk(_load_settings_tree()):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "env"
            and func.attr in readers
            and len(node.args) >= 2
        ):
            calls += 1
            name = ast.unparse(node.args[0])
            for sub in ast.walk(node.args[1]):
                if isinstance(sub, ast.Constant) and sub.value is not None:
                    found.append(f"{name}: default {ast.unparse(node.args[1])}")
        if isinstance(func, ast.Name) and func.id in classes:
            for kw in node.keywords:
                if isinstance(kw.value, ast.Constant) and kw.value.value is not None:
                    found.append(f"{func.id}({kw.arg}={ast.unparse(kw.value)})")
    assert found == []
    assert calls >= 40  # the walk found the readers


def _settings_classes() -> list[type]:
    """Every dataclass defined in config.py."""
    found = [
        v
        for v in vars(config).values()
        if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == config.__name__
    ]
    assert Settings in found and PipelineSettings in found and len(found) >= 7
    return found


def test_the_derived_defaults_follow_their_inputs() -> None:
    """Two defaults depend on other settings: max_uncommitted is 4 x max_in_flight, and
    revoke_wait_s is at most the shutdown grace."""
    s = load_settings({**BASE, "ESCALATOR_MAX_IN_FLIGHT": "10", "ESCALATOR_SHUTDOWN_GRACE_S": "3"})
    assert s.pipeline.max_uncommitted == 40 and s.pipeline.revoke_wait_s == 3.0
    d = PipelineSettings()
    assert d.max_uncommitted == 4 * d.max_in_flight


@pytest.mark.parametrize("value", ["exactly_once", "EXACTLY_ONCE", "at_least_once"])
def test_the_processing_guarantee_is_one_of_its_literal_values(value: str) -> None:
    """ESCALATOR_PROCESSING_GUARANTEE is case-insensitive and stored as the Literal's value."""
    s = load_settings({**BASE, "ESCALATOR_PROCESSING_GUARANTEE": value})
    assert s.pipeline.processing_guarantee == value.lower()
    assert s.pipeline.processing_guarantee in get_args(config.ProcessingGuarantee)


def test_each_topic_has_its_variable_and_all_lists_every_topic() -> None:
    """The topics are Topics' fields, each set by ESCALATOR_<FIELD>_TOPIC; all() lists them."""
    assert Topics.variables() == {
        "requests": "ESCALATOR_REQUESTS_TOPIC",
        "escalations": "ESCALATOR_ESCALATIONS_TOPIC",
        "results": "ESCALATOR_RESULTS_TOPIC",
        "dead_letter": "ESCALATOR_DEAD_LETTER_TOPIC",
        "decisions": "ESCALATOR_DECISIONS_TOPIC",
        "reviews": "ESCALATOR_REVIEWS_TOPIC",
        "adjudications": "ESCALATOR_ADJUDICATIONS_TOPIC",
        "parked": "ESCALATOR_PARKED_TOPIC",
        "handoff": "ESCALATOR_HANDOFF_TOPIC",
        "lane_state": "ESCALATOR_LANE_STATE_TOPIC",
        "tier0_state": "ESCALATOR_TIER0_STATE_TOPIC",
    }
    env = {variable: f"t.{name}" for name, variable in Topics.variables().items()}
    topics = load_settings({**BASE, **env}).topics
    assert topics.all() == [f"t.{name}" for name in Topics.variables()]
    assert Topics().all() == [
        "escalator.requests",
        "escalator.escalations",
        "escalator.results",
        "escalator.dead-letter",
        "escalator.decisions",
        "escalator.reviews",
        "escalator.adjudications",
        "escalator.parked",
        "escalator.handoff",
        "escalator.lane-state",
        "escalator.tier0-state",
    ]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ESCALATOR_PARK_AT": "1.0"}, "ESCALATOR_PARK_AT"),
        ({"ESCALATOR_PARK_AT": "half"}, "ESCALATOR_PARK_AT"),
        ({"ESCALATOR_RETENTION_CHECK_S": "0"}, "ESCALATOR_RETENTION_CHECK_S"),
        ({"ESCALATOR_PARKED_RETENTION_MS": "1000"}, "ESCALATOR_PARKED_RETENTION_MS"),
        ({"ESCALATOR_PARKING": "maybe"}, "ESCALATOR_PARKING"),
        ({"ESCALATOR_PARKED_TOPIC": "escalator.requests"}, "ESCALATOR_PARKED_TOPIC"),
    ],
)
def test_parking_settings_are_validated_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    """A bad parking setting stops start-up with one line that names it."""
    with pytest.raises(ConfigError, match=variable):
        load_settings({**BASE, **env})


def test_parking_settings_default_to_parking_at_half_of_retention() -> None:
    """Defaults: on, at 0.5, checked every 30 s, the parked topic kept until deleted."""
    p = load_settings(BASE).parking
    assert (p.enabled, p.park_at, p.check_s, p.parked_retention_ms) == (True, 0.5, 30.0, -1)
    custom = load_settings(
        {**BASE, "ESCALATOR_PARK_AT": "0.3", "ESCALATOR_PARKED_RETENTION_MS": "2592000000"}
    ).parking
    assert (custom.park_at, custom.parked_retention_ms) == (0.3, 2_592_000_000)
