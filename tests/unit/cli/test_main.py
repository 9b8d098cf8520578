"""The one entry point (cli/main.py): every bad input is one line on stderr and exit code 2:
each setting, each flag of each command (the development commands too).

The cases are checked for completeness against the code, not against a list kept by hand:
the settings are every variable ``load_settings`` reads (its sources, with SASL on so that
the SASL variables are read too, and every variable-like string in config.py), and the flags
are every argument of every parser ``escalator`` builds. A new setting or flag without a bad
case here, or a stated reason why no value of it is bad, fails
:func:`test_every_setting_has_a_case` or :func:`test_every_flag_has_a_case`. Switches and
choices get their cases generated (a value given to a switch; a value not among the
choices).

Settings are checked through ``escalator config`` (which validates what ``run`` validates,
files and ports included) and flags through their commands, in this process. The same as
processes (a log level bad before logging is configured, busy ports, every command that
needs Kafka with nothing listening there, no asyncio noise at exit) are in
tests/integration/test_cli_errors.py: a process costs seconds, too slow for a unit test.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from escalator import config
from escalator.cli.main import build_parser, main

UNREACHABLE = "127.0.0.1:9"  # nothing listens on the discard port here: refused at once
BASE = {"KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
VARIABLE = re.compile(r"^(ESCALATOR|KAFKA|ANTHROPIC|OTEL)_[A-Z0-9_]+$")


# -- files and ports the cases need --------------------------------------------------------------
@dataclass(frozen=True)
class File:
    """A value that is the path of a file with this content (written for the case)."""

    content: str


@dataclass(frozen=True)
class BusyPort:
    """A value that is a port something already listens on."""


BUSY = BusyPort()
MISSING = "/no/such/file.json"
TASK = '{"labels": %s, "instructions": "Classify."}'


def _threshold_file(**overrides: object) -> File:
    body: dict[str, object] = {
        "schema_version": 1,
        "version": "cal-test",
        "models": {"cheap": config.DEFAULT_CHEAP_MODEL, "strong": config.DEFAULT_STRONG_MODEL},
        "threshold": 0.7,
        "label_thresholds": {},
    }
    body.update(overrides)
    return File(orjson.dumps({k: v for k, v in body.items() if v is not None}).decode())


@dataclass(frozen=True)
class Case:
    value: str | File | BusyPort | None  # None: unset
    extra: dict[str, str] = field(default_factory=dict)
    tier: str = "all"  # escalator config --tier


SASL = {
    "ESCALATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "ESCALATOR_KAFKA_SASL_USERNAME": "svc",
    "ESCALATOR_KAFKA_SASL_PASSWORD": "secret-password",
}
SSL = {"ESCALATOR_KAFKA_SECURITY_PROTOCOL": "SSL"}
REVIEW = "review"
PASSWORDS = File("alice:not-a-hash\n")
#: A valid line of a passwords file (``escalator review hash alice``).
VALID_HASH = "scrypt$16384$8$1$7VL37_6juiaOvFdIiuTaVQ$YkxgGtzSyXy-t8ZTikS2vZhvZukPpcOUvJCcA8LZ1Dg"

#: Each setting's bad values. The message must name the variable.
SETTING_CASES: dict[str, list[Case]] = {
    "KAFKA_BOOTSTRAP_SERVERS": [
        Case(None),
        Case("no-port"),
        Case("127.0.0.1:99999"),
        Case(","),
    ],
    "ESCALATOR_KAFKA_SECURITY_PROTOCOL": [Case("SASL_TLS")],
    "ESCALATOR_KAFKA_SASL_MECHANISM": [Case("GSSAPI", SASL)],
    "ESCALATOR_KAFKA_SASL_USERNAME": [Case(None, {**SASL, "ESCALATOR_KAFKA_SASL_USERNAME": ""})],
    "ESCALATOR_KAFKA_SASL_PASSWORD": [Case(None, {**SASL, "ESCALATOR_KAFKA_SASL_PASSWORD": ""})],
    "ESCALATOR_KAFKA_SSL_CAFILE": [Case(MISSING), Case(File("not a certificate"), SSL)],
    "ESCALATOR_KAFKA_SSL_CERTFILE": [Case(MISSING), Case(File("not a certificate"), SSL)],
    "ESCALATOR_KAFKA_SSL_KEYFILE": [Case(MISSING)],
    "ESCALATOR_KAFKA_UNREACHABLE_S": [Case("0"), Case("soon")],
    "ANTHROPIC_BASE_URL": [Case("ftp://x"), Case("not a url")],
    "ESCALATOR_CHEAP_MODEL": [Case("claude-nope-1")],
    "ESCALATOR_STRONG_MODEL": [Case("claude-nope-1")],
    "ESCALATOR_MODEL_TIMEOUT_S": [Case("0"), Case("fast")],
    "ESCALATOR_MODEL_MAX_TOKENS": [Case("8"), Case("lots")],
    "ESCALATOR_MODEL_MAX_ATTEMPTS": [Case("0")],
    "ESCALATOR_BACKOFF_INITIAL_S": [Case("-1")],
    "ESCALATOR_BACKOFF_MAX_S": [Case("1000")],
    "ESCALATOR_MODEL_PROFILES_FILE": [Case(MISSING), Case(File("{not json"))],
    "ESCALATOR_CHEAP_UNAVAILABLE": [Case("drop")],
    "ESCALATOR_MODEL_CHECK": [Case("maybe")],
    "ESCALATOR_CACHE_TTL": [Case("10m")],
    "ESCALATOR_SHUTDOWN_GRACE_S": [Case("-1")],
    "ESCALATOR_MAX_IN_FLIGHT": [Case("0"), Case("many")],
    "ESCALATOR_PROCESSING_GUARANTEE": [Case("at_most_once")],
    "ESCALATOR_COMMIT_INTERVAL_S": [Case("0")],
    "ESCALATOR_REVOKE_WAIT_S": [Case("-1")],
    "ESCALATOR_MAX_TEXT_CHARS": [Case("0")],
    "ESCALATOR_MAX_POLL_INTERVAL_MS": [Case("10")],
    "ESCALATOR_SESSION_TIMEOUT_MS": [Case("10")],
    "ESCALATOR_POISON_MAX_ATTEMPTS": [Case("0")],
    "ESCALATOR_INVALID_ANSWER_ATTEMPTS": [Case("0")],
    "ESCALATOR_BREAKER_WINDOW": [Case("1")],
    "ESCALATOR_BREAKER_FAILURE_RATIO": [Case("2")],
    "ESCALATOR_BREAKER_COOLDOWN_S": [Case("0")],
    "ESCALATOR_BREAKER_COOLDOWN_MAX_S": [Case("0")],
    "ESCALATOR_BLOCKED_PROBE_S": [Case("0")],
    "ESCALATOR_MAX_UNCOMMITTED": [Case("1")],
    "ESCALATOR_ADAPTIVE_CONCURRENCY": [Case("maybe")],
    "ESCALATOR_GC_TUNING": [Case("sometimes")],
    "ESCALATOR_THRESHOLD": [Case("1.5"), Case("high")],
    "ESCALATOR_LABEL_THRESHOLDS": [Case("safe=2"), Case("safe:0.9"), Case("nolabel=0.5")],
    "ESCALATOR_TASK_FILE": [
        Case(MISSING),
        Case(File("{not json")),
        Case(File(TASK % '["safe\\nunsafe", "other"]')),  # a label with a newline
        Case(File(TASK % orjson.dumps([f"label-{i}" for i in range(500)]).decode())),
        Case(File(TASK % '[" safe", "unsafe"]')),
    ],
    "ESCALATOR_PRICES_FILE": [
        Case(MISSING),
        Case(File('{"models": {"claude-haiku-5-5": {"input": -1}}}')),
        Case(
            File(
                '{"models": {"other-model": {"input": 1, "output": 1, "cache_write": 1, '
                '"cache_read": 1}}}'
            )
        ),
    ],
    "ESCALATOR_TIER0_FILE": [
        Case(MISSING),
        Case(File("not json")),
        # A manifest with no weights (a trained one's other refusals: tests/unit/tiers).
        Case(File('{"schema_version": 1, "kind": "escalator-tier0", "version": "t0-x"}')),
    ],
    "ESCALATOR_THRESHOLDS_FILE": [
        Case(MISSING),
        Case(_threshold_file(threshold=1.7)),  # would escalate everything: a 20x bill
        Case(_threshold_file(threshold=-0.1)),
        Case(_threshold_file(label_thresholds={"safe": 3})),
        Case(_threshold_file(models=None)),
        Case(_threshold_file(models={"cheap": "x", "strong": "y"})),
        Case(_threshold_file(strong={"default": 5, "per_label": {}})),
        Case(File("{not json")),
    ],
    "ESCALATOR_SHADOW_RATE": [Case("2")],
    "ESCALATOR_ADMISSION": [Case("sometimes")],
    "ESCALATOR_ADMISSION_TARGET": [Case("0.1")],
    "ESCALATOR_ADMISSION_COUNT_CACHE_READS": [Case("sometimes")],
    "ESCALATOR_MONTHLY_SPEND_CAP_USD": [Case("-5"), Case("a lot")],
    "ESCALATOR_ADMISSION_CAP": [Case("claude-haiku-5-5=600:0:100"), Case("x")],
    **{variable: [Case("bad topic!")] for variable in config.Topics.variables().values()},
    "ESCALATOR_HUMAN_TIER": [Case("maybe")],
    "ESCALATOR_STRONG_THRESHOLD": [Case("2")],
    "ESCALATOR_STRONG_LABEL_THRESHOLDS": [Case("safe=2"), Case("nolabel=0.5")],
    "ESCALATOR_ADJUDICATE_DISAGREE": [Case("2")],
    "ESCALATOR_ADJUDICATE_AGREE": [Case("-1")],
    "ESCALATOR_REVIEW_HOST": [Case("not a host!", tier=REVIEW)],
    "ESCALATOR_REVIEW_PORT": [Case("70000"), Case(BUSY, tier=REVIEW)],
    "ESCALATOR_REVIEW_PASSWORDS_FILE": [
        Case(MISSING),
        Case(PASSWORDS, tier=REVIEW),
        Case(File("\n"), tier=REVIEW),
    ],
    "ESCALATOR_REVIEW_TOKENS_FILE": [
        Case(MISSING),
        # Both files set: one way to sign in, please.
        Case(File(f"bob:{VALID_HASH}\n"), tier=REVIEW),
        Case(File("bob:x\n"), {"ESCALATOR_REVIEW_PASSWORDS_FILE": ""}, REVIEW),
        # Neither: nothing is served without signing in.
        Case(None, {"ESCALATOR_REVIEW_PASSWORDS_FILE": ""}, REVIEW),
    ],
    "ESCALATOR_REVIEW_SECURE_COOKIES": [Case("maybe")],
    "ESCALATOR_REVIEW_LEASE_S": [Case("0")],
    "ESCALATOR_REVIEW_MAX_AGE_S": [Case("0")],
    "ESCALATOR_REVIEW_BUFFER": [Case("0")],
    "ESCALATOR_METRICS_PORT": [Case("70000"), Case("-1"), Case(BUSY)],
    "ESCALATOR_METRICS_HOST": [Case("not a host!")],
    "ESCALATOR_LOG_LEVEL": [Case("LOUD")],
    "ESCALATOR_LOG_TEXT": [Case("maybe")],
    "ESCALATOR_TOPIC_PARTITIONS": [Case("0")],
    "ESCALATOR_TOPIC_REPLICATION": [Case("0")],
    "ESCALATOR_MONITOR_ALPHA": [Case("0"), Case("0.9"), Case("rare")],
    "ESCALATOR_TIER0_SAMPLE_RATE": [Case("1.5"), Case("-0.1"), Case("some")],
    "ESCALATOR_PARKING": [Case("maybe")],
    "ESCALATOR_PARK_AT": [Case("0.99"), Case("half")],
    "ESCALATOR_RETENTION_CHECK_S": [Case("0"), Case("often")],
    "ESCALATOR_PARKED_RETENTION_MS": [Case("1000"), Case("forever")],
    "ESCALATOR_TRACING": [Case("maybe")],
    "ESCALATOR_BATCH_LANE": [Case("maybe")],
    "ESCALATOR_DEADLINE_S": [Case("0"), Case("tomorrow"), Case("3000000")],
    "ESCALATOR_BATCH_EXPECTED_S": [Case("0"), Case("90000"), Case("soon")],
    "ESCALATOR_BATCH_SLACK_FACTOR": [Case("0.5"), Case("twice")],
    "ESCALATOR_BATCH_FALLBACK_S": [Case("-1"), Case("some")],
    "ESCALATOR_BATCH_MAX_AGE_S": [Case("0"), Case("old")],
    "ESCALATOR_BATCH_POLL_S": [Case("0"), Case("often")],
    "ESCALATOR_MEASURE_LANE": [Case("later")],
    "ESCALATOR_LANE_QUEUE_LIMIT": [Case("0"), Case("many")],
    "ESCALATOR_LANE_RPM": [Case("0"), Case("fast"), Case("2000000")],
    "ESCALATOR_LANE_MAX_WAITING": [Case("0"), Case("all"), Case("10001")],
    "OTEL_TRACES_EXPORTER": [
        Case("zipkin"),
        Case("none,otlp"),
        Case("none", {"ESCALATOR_TRACING": "on"}),
    ],
    "OTEL_EXPORTER_OTLP_PROTOCOL": [Case("grpc", {"ESCALATOR_TRACING": "on"})],
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": [Case("grpc", {"OTEL_TRACES_EXPORTER": "otlp"})],
}

#: Settings for which no value is bad, and why.
SETTING_EXEMPT: dict[str, str] = {
    "ANTHROPIC_API_KEY": "any string may be a key; a wrong one is found by the start-up model "
    "check and by doctor (tests/integration/test_doctor.py)",
    "ESCALATOR_KAFKA_CLIENT_ID": "any string is a legal Kafka client id",
    "ESCALATOR_CHEAP_GROUP": "any non-empty string is a legal consumer group id",
    "ESCALATOR_LANE_GROUP": "any non-empty string is a legal consumer group id",
    "ESCALATOR_STRONG_GROUP": "any non-empty string is a legal consumer group id",
    "ESCALATOR_REVIEW_GROUP": "any non-empty string is a legal consumer group id",
    "ESCALATOR_PARKED_REPLAY_GROUP": "any non-empty string is a legal consumer group id",
    "ESCALATOR_GROUP_INSTANCE_ID": "any non-empty string is a legal group instance id",
    "ESCALATOR_TRANSACTIONAL_ID_PREFIX": "any non-empty string is a legal transactional id",
    "OTEL_SDK_DISABLED": "read as the OpenTelemetry SDK reads it: only true turns it off",
}


def _variables_in_config() -> set[str]:
    """Every variable load_settings reads: its sources with SASL and SSL on (so the
    conditional ones are read), and every variable-like string constant in config.py."""
    env = {**BASE, **SASL}
    _, sources = config.explain_settings(env)
    found = {s.variable for s in sources}
    for node in ast.walk(ast.parse(inspect.getsource(config))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if VARIABLE.match(node.value):
                found.add(node.value)
    found |= set(config.Topics.variables().values())
    return found


def test_every_setting_has_a_case() -> None:
    """Each variable the configuration reads has bad-value cases here, or a reason why none
    exists; no case names a variable that is not read."""
    variables = _variables_in_config()
    assert len(variables) > 70  # the discovery found the settings, not a handful
    covered = set(SETTING_CASES) | set(SETTING_EXEMPT)
    assert sorted(variables - covered) == [], "settings without a bad-input case"
    assert sorted(covered - variables) == [], "cases for variables nothing reads"
    assert not set(SETTING_CASES) & set(SETTING_EXEMPT)


def _setting_cases() -> Iterator[tuple[str, Case]]:
    for variable, cases in SETTING_CASES.items():
        for case in cases:
            yield variable, case


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment without any of our variables, then BASE."""
    for name in list(os.environ):
        if VARIABLE.match(name):
            monkeypatch.delenv(name)
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _one_line(captured: pytest.CaptureResult[str], code: int) -> str:
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "case"),
    list(_setting_cases()),
    ids=[f"{v}={c.value!r}"[:70] for v, c in _setting_cases()],
)
def test_a_bad_setting_is_one_line_naming_it(
    variable: str,
    case: Case,
    clean_env: pytest.MonkeyPatch,
    busy_port: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``escalator config`` with the bad value: exit 2, one line on stderr, naming the
    variable, no traceback, nothing on stdout."""
    reviewers = _write(tmp_path, "reviewers", f"alice:{VALID_HASH}\n")
    env = {"ESCALATOR_REVIEW_PASSWORDS_FILE": str(reviewers), **case.extra}
    value = case.value
    if isinstance(value, File):
        env[variable] = str(_write(tmp_path, "case", value.content))
    elif isinstance(value, BusyPort):
        env[variable] = str(busy_port)
        env.setdefault("ESCALATOR_METRICS_HOST", "0.0.0.0")
    elif value is None:
        env[variable] = ""
    else:
        env[variable] = value
    for name, given in env.items():
        clean_env.setenv(name, given)
    code = main(["config", "--tier", case.tier])
    captured = capsys.readouterr()
    line = _one_line(captured, code)
    assert line.startswith("escalator: error: ")
    assert variable in line, line
    assert captured.out == ""


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(content)
    return path


def test_a_valid_configuration_passes(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The base of every case is valid: each case fails for its own value, not the base's."""
    clean_env.setenv("ESCALATOR_METRICS_PORT", "0")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "KAFKA_BOOTSTRAP_SERVERS" in out and out.rstrip().splitlines()[-1].startswith("ok:")


# -- flags ----------------------------------------------------------------------------------------
def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:  # argparse has no public walk of its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _arguments() -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """Every argument of every command: (command path, action), without help/version and
    without the sub-command selectors themselves."""
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(
                action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
            ):
                continue
            yield path, action


def _key(path: tuple[str, ...], action: argparse.Action) -> str:
    return " ".join([*path, action.option_strings[0] if action.option_strings else action.dest])


def _switch(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)


#: Explicit bad argv per argument (switches and choices are generated). A case is the whole
#: argv after ``escalator``; the message must name the flag (or, for a positional, the value).
FLAG_CASES: dict[str, list[list[str]]] = {
    "topics --partitions": [["topics", "create", "--partitions", "0"]],
    "topics --replication": [["topics", "create", "--replication", "x"]],
    "produce file": [["produce", "no-such-file.jsonl"]],
    "produce --topic": [["produce", "-", "--topic", "bad topic!"]],
    "read --id": [],
    "read --key": [],
    "read --since": [["read", "results", "--since", "yesterday"]],
    "read --until": [["read", "results", "--until", "tomorrow"]],
    "read --limit": [["read", "results", "--limit", "0"]],
    "read --reason": [["read", "results", "--reason", "invalid_json"]],
    "export --input": [["export", "--input", "no-such-file.jsonl"]],
    "export --since": [["export", "--since", "last week"]],
    "export --until": [["export", "--until", "2026-13-45"]],
    "export --output": [["export", "--output", "/no/such/dir/out.jsonl"]],
    "calibrate --input": [["calibrate", "--input", "no-such-file.jsonl"]],
    "calibrate --since": [["calibrate", "--since", "x"]],
    "calibrate --until": [["calibrate", "--until", "x"]],
    "calibrate --target": [
        ["calibrate", "--target", "1.5"],
        ["calibrate", "--objective", "rate", "--target", "-0.1"],
        ["calibrate", "--objective", "budget", "--target", "0"],
        ["calibrate", "--target", "nan"],
    ],
    "calibrate --delta": [["calibrate", "--delta", "0"], ["calibrate", "--delta", "1"]],
    "calibrate --margin": [["calibrate", "--margin", "2"]],
    "calibrate --grid": [["calibrate", "--grid", "0:2:0.1"], ["calibrate", "--grid", "x"]],
    "calibrate --output": [["calibrate", "--output", "/no/such/dir/t.json"]],
    "calibrate --ledger": [],
    "calibrate --power": [["calibrate", "--power", "1"]],
    "calibrate --traffic-per-hour": [["calibrate", "--traffic-per-hour", "0"]],
    "calibrate --assume-threshold": [["calibrate", "--assume-threshold", "7"]],
    "calibrate --assume-accepted": [["calibrate", "--assume-accepted", "0"]],
    "calibrate --assume-disagreement": [["calibrate", "--assume-disagreement", "1.2"]],
    "calibrate --strong-call-usd": [["calibrate", "--strong-call-usd", "-1"]],
    "calibrate --assume-strong-tokens": [["calibrate", "--assume-strong-tokens", "many"]],
    "calibrate --human-budget": [["calibrate", "--human-budget", "2"]],
    "calibrate --review-cost": [["calibrate", "--review-cost", "-0.4"]],
    "calibrate --strong-grid": [["calibrate", "--strong-grid", "0,2"]],
    "calibrate --review-label": [],
    "calibrate --plot": [["calibrate", "--plot", "/no/such/dir/p.png"]],
    "report --input": [["report", "--input", "no-such-file.jsonl"]],
    "report --since": [["report", "--since", "x"]],
    "report --until": [["report", "--until", "x"]],
    "report --monthly-volume": [["report", "--monthly-volume", "0"]],
    "report --review-cost": [["report", "--review-cost", "-1"]],
    "dead-letters --reason": [["dead-letters", "replay", "--reason", "invalid_utf8"]],
    "dead-letters --since": [["dead-letters", "summary", "--since", "x"]],
    "dead-letters --until": [["dead-letters", "summary", "--until", "x"]],
    "review hash name": [["review", "hash", "not a reviewer!"]],
    "kafka --nodes": [["kafka", "start", "--nodes", "0"]],
    "kafka --dir": [],
    "kafka --kafka-version": [["kafka", "start", "--kafka-version", "latest"]],
    "kafka --timeout": [["kafka", "start", "--timeout", "0"]],
    "sim --host": [["sim", "--host", "not a host!", "--port", "0"]],
    "sim --port": [["sim", "--port", "70000"]],
    "sim --latency": [["sim", "--latency", "slow"]],
    "sim --fault": [["sim", "--fault", "boom"], ["sim", "--fault", "429:2"]],
    "sim --retry-after-s": [["sim", "--retry-after-s", "-1"]],
    "sim --seed": [["sim", "--seed", "x"]],
    "sim --api-key": [],
    "sim --tier": [["sim", "--tier", "1:2"]],
    "sim --rate-limit": [["sim", "--rate-limit", "claude-haiku-5-5"]],
    "sim --workspace-limit": [["sim", "--workspace-limit", "claude-haiku-5-5=1:2"]],
    "sim --retire": [],
    "sim --enum-case-rate": [["sim", "--enum-case-rate", "1.5"]],
    "sim --refusal-lexicon": [["sim", "--refusal-lexicon", "no-such-file.json"]],
    "sim --batch-latency": [["sim", "--batch-latency", "-1"], ["sim", "--batch-latency", "x"]],
    "sim --batch-fault": [["sim", "--batch-fault", "boom"], ["sim", "--batch-fault", "errored:2"]],
    "sim --batch-limits": [["sim", "--batch-limits", "10"], ["sim", "--batch-limits", "0:5"]],
    "demo --count": [["demo", "--count", "0"]],
    "demo --target": [["demo", "--target", "1"]],
    "demo --strong-threshold": [["demo", "--strong-threshold", "2"]],
    "demo --output-dir": [],
    "demo --lane-batch-s": [["demo", "--lane-batch-s", "-1"], ["demo", "--lane-batch-s", "301"]],
    "tier0 pairs --since": [["tier0", "pairs", "--since", "x"]],
    "tier0 pairs --until": [["tier0", "pairs", "--until", "x"]],
    "tier0 pairs --output": [["tier0", "pairs", "--output", "/no/such/dir/p.jsonl"]],
    "tier0 train --input": [["tier0", "train", "--input", "no-such-file.jsonl"]],
    "tier0 train --since": [["tier0", "train", "--since", "x"]],
    "tier0 train --until": [["tier0", "train", "--until", "x"]],
    "tier0 train --output": [["tier0", "train", "--output", "/no/such/dir/t.json"]],
    "tier0 train --alpha": [["tier0", "train", "--alpha", "0"]],
    "tier0 certify --input": [["tier0", "certify", "--input", "no-such-file.jsonl"]],
    "tier0 certify --since": [["tier0", "certify", "--since", "x"]],
    "tier0 certify --until": [["tier0", "certify", "--until", "x"]],
    "tier0 certify --artefact": [["tier0", "certify", "--artefact", "no-such-file.json"]],
    "tier0 certify --target": [["tier0", "certify", "--target", "1.5"]],
    "tier0 certify --delta": [["tier0", "certify", "--delta", "0"]],
    "tier0 certify --margin": [["tier0", "certify", "--margin", "2"]],
    "tier0 certify --ledger": [],
    "tier0 certify --power": [["tier0", "certify", "--power", "-1"]],
    "tier0 inspect --artefact": [["tier0", "inspect", "--artefact", "no-such-file.json"]],
}
#: Arguments with an empty case list above: why no value of them is bad.
FLAG_EXEMPT: dict[str, str] = {
    "read --id": "any string may be a request id (nothing matches: nothing printed)",
    "read --key": "any string may be a key (nothing matches: nothing printed)",
    "calibrate --ledger": "any path; 'none' turns it off; an unreadable one is an OS error",
    "calibrate --review-label": "any string may be a label (one not in the log selects none)",
    "kafka --dir": "any directory path; one that cannot be created is an OS error",
    "sim --api-key": "any string may be the key the emulator accepts",
    "sim --retire": "any model name may be declared retired",
    "demo --output-dir": "any directory path; one that cannot be created is an OS error",
    "tier0 certify --ledger": "any path; 'none' turns it off; an unreadable one is an OS error",
}


def _generated(path: tuple[str, ...], action: argparse.Action) -> list[list[str]]:
    """Cases that follow from the argument's kind: a value given to a switch; a value not
    among the choices. The other arguments of the command get a valid first value."""
    prefix = list(path)
    if path == ("topics",):
        prefix.append("create")
    elif path == ("dead-letters",):
        prefix.append("summary")
    elif path == ("read",):
        prefix.append("results")
    elif path == ("kafka",):
        prefix.append("status")
    elif path == ("produce",):
        prefix.append("-")
    elif path == ("review", "hash"):
        prefix.append("alice")
    if _switch(action):
        return [[*prefix, f"{action.option_strings[0]}=yes"]]
    if action.choices is not None:
        if action.option_strings:
            return [[*prefix, action.option_strings[0], "not-a-choice"]]
        return [[*path, "not-a-choice"]]
    return []


def _flag_cases() -> Iterator[tuple[str, list[str], str]]:
    for path, action in _arguments():
        key = _key(path, action)
        named = action.option_strings[0] if action.option_strings else None
        for argv in _generated(path, action) + FLAG_CASES.get(key, []):
            yield key, argv, named or argv[-1]


def test_every_flag_has_a_case() -> None:
    """Each argument of each command (the development ones too) has a bad-value case,
    generated or listed, or a stated reason why no value of it is bad; and has help text."""
    keys = {_key(path, action) for path, action in _arguments()}
    assert len(keys) > 80 and "calibrate --delta" in keys and "sim --port" in keys
    generated = {_key(path, action) for path, action in _arguments() if _generated(path, action)}
    listed = {k for k, cases in FLAG_CASES.items() if cases}
    assert sorted(keys - generated - listed - set(FLAG_EXEMPT)) == [], "flags without a case"
    assert sorted(set(FLAG_CASES) - keys) == [], "cases for flags that do not exist"
    assert sorted(k for k, cases in FLAG_CASES.items() if not cases and k not in FLAG_EXEMPT) == []
    missing_help = sorted(
        _key(path, action) for path, action in _arguments() if not (action.help or "").strip()
    )
    assert missing_help == [], "arguments without help text"


def test_help_texts_are_plain_text() -> None:
    """No reStructuredText markup (double backquotes) in any description or help, and every
    command has a help line."""
    for path, parser in _parsers(build_parser()):
        texts = [parser.description or "", *(a.help or "" for a in parser._actions)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                texts += [c.help or "" for c in action._choices_actions]
                for name in action.choices:
                    helps = {c.dest: c.help for c in action._choices_actions}
                    assert helps.get(name), f"escalator {' '.join((*path, name))}: no help"
        assert not [t for t in texts if "``" in t], path


@pytest.mark.parametrize(("key", "argv", "named"), list(_flag_cases()))
def test_a_bad_flag_is_one_line_naming_it(
    key: str,
    argv: list[str],
    named: str,
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2, one line on stderr naming the flag (or the positional's value), no traceback,
    before any connection is tried (the broker address is one where nothing listens)."""
    clean_env.chdir(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    line = _one_line(captured, code)
    assert named in line, line
    assert "nothing listens" not in line and "cannot connect" not in line, line
