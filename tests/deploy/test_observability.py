"""Dashboards and alerts against what the service exports: every series a panel or a rule
queries exists, with the labels it filters and groups on; the rules pass promtool's checks and
unit tests; every alert has a runbook."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from escalator.observability.metrics import Metrics
from tests.deploy.tools import ROOT, tool

DASHBOARD = ROOT / "deploy/grafana/dashboards/escalator.json"
RULES = ROOT / "deploy/prometheus/rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/rules.test.yml"
OPERATIONS = ROOT / "docs/OPERATIONS.md"

SERIES = re.compile(r"\b(escalator_[a-z0-9_]+)(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on|without)\s*\(([^)]*)\)")
# Labels Prometheus attaches at scrape time, not the service.
TARGET_LABELS = {"job", "instance", "component"}


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":  # a row's panels follow it at the top level
            assert not panel.get("panels"), f"collapsed row {panel['title']!r}: unchecked"
            continue
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def check_expr(expr: str, catalogue: dict[str, tuple[str, ...]], recorded: set[str]) -> None:
    used = SERIES.findall(expr)
    names = [name for name, _ in used]
    assert names or any(r in expr for r in recorded), f"queries no escalator series: {expr}"
    labels: set[str] = set(TARGET_LABELS) | {"le"}
    for name, selector in used:
        assert name in catalogue, f"{name} is not exported by the service"
        labels |= set(catalogue[name])
        for label in MATCHER.findall(selector):
            assert label in catalogue[name] or label in TARGET_LABELS, (
                f"{name} has no label {label!r}"
            )
    for group in GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in labels, f"grouping on {label!r}, which no series in {expr} has"


@pytest.fixture(scope="module")
def catalogue() -> dict[str, tuple[str, ...]]:
    return Metrics().catalogue()


def test_every_dashboard_query_uses_exported_series(catalogue: dict[str, tuple[str, ...]]) -> None:
    exprs = list(dashboard_exprs())
    assert len(exprs) >= 12
    for title, expr in exprs:
        try:
            check_expr(expr, catalogue, set())
        except AssertionError as exc:
            raise AssertionError(f"panel {title!r}: {exc}") from exc


def test_the_check_catches_a_renamed_metric(catalogue: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(AssertionError, match="not exported"):
        check_expr("rate(escalator_decision_total[5m])", catalogue, set())
    with pytest.raises(AssertionError, match="no label"):
        check_expr('escalator_circuit_open{model="x"}', catalogue, set())
    with pytest.raises(AssertionError, match="grouping on"):
        check_expr("sum by (reason) (escalator_in_flight)", catalogue, set())


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    titles = " | ".join(t for t, _ in dashboard_exprs()).lower()
    for topic in (
        "throughput",
        "escalation rate",
        "spend per hour",
        "shadow",
        "p50 and p99",
        "commit lag",
        "dead letters",
        "retries",
        "circuit breaker",
        "in flight",
        "rate limit: limit, used rate and 429s",
        "admission",
        "review queues: depth",
        "oldest item age against the bound",
        "decisions per hour, by reviewer",
        "time per decision, p50 and p90",
        "oldest held record: share of retention used",
        "parked and lost records",
        "time until the api says it ends",
        "promise monitors: e-value against the rejection level",
        "promise monitors: verdicts",
        "tier 0: share",
        "tier 0: state, withdrawals",
        "batch lane: requests waiting, per lane",
        "batch lane: share of requests",
        "batches in flight, the oldest one's age against the expected completion",
        "time to results",
        "fallbacks to real time by result (expired, errored, canceled, deadline)",
        "deadline misses",
        "batch requests in the processing queue against the limit, batches held, 429s",
    ):
        assert topic in titles, topic
    rows = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] == "row"]
    assert {"Human tier", "Holds and retention", "Promise monitors", "Tier 0", "Batch lane"} <= set(
        rows
    )


def test_every_rule_uses_exported_series(catalogue: dict[str, tuple[str, ...]]) -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    for rule in rules():
        check_expr(rule["expr"], catalogue, recorded)


def test_every_alert_has_a_runbook() -> None:
    text = OPERATIONS.read_text()
    headings = {m.lower() for m in re.findall(r"^#{2,4} (\S+)", text, flags=re.M)}
    alerts = [r for r in rules() if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "EscalatorEscalationRateDrift",
        "EscalatorDeadLetters",
        "EscalatorLagGrowing",
        "EscalatorCircuitOpen",
        "EscalatorApiBlocked",
        "EscalatorSpendOverBudget",
        "EscalatorNoDecisions",
        "EscalatorRateLimitBound",
        "EscalatorRetentionAtRisk",
        "EscalatorRecordsParked",
        "EscalatorRecordsLost",
        "EscalatorGuaranteeBroken",
        "EscalatorConfidenceDrift",
        "EscalatorTier0Withdrawn",
        "EscalatorLaneBatchOverdue",
        "EscalatorLaneDeadlineMissed",
    }
    for alert in alerts:
        assert alert["alert"].lower() in headings, f"no runbook section for {alert['alert']}"
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert anchor == alert["alert"].lower()


def test_every_alert_has_a_promtool_test_in_which_it_fires() -> None:
    """promtool passes a rules file whose alerts have no test at all: so each alert must have
    at least one test case in which it is expected to fire (an expectation of silence alone
    would pass with a broken expression too)."""
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in cases
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts, "no alert read from the rules file: the check would pass vacuously"
    assert alerts <= firing, f"alerts never tested firing: {sorted(alerts - firing)}"


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    promtool = tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout + test.stderr


def test_compose_provisions_the_dashboard_and_the_rules() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    mounts = {
        v.split(":")[0]: v.split(":")[1]
        for service in ("grafana", "prometheus")
        for v in compose["services"][service]["volumes"]
    }
    for source in mounts:
        assert (ROOT / "deploy" / source).exists(), source
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == [mounts["./prometheus/rules.yml"]]
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/escalator.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]


def test_compose_links_exemplars_to_the_traces() -> None:
    """The tiers export spans to the compose Jaeger, Prometheus stores exemplars, and Grafana's
    Prometheus data source sends an exemplar's trace_id to a Jaeger data source that exists
    and points at that Jaeger's query port; the dashboard's latency panels ask for exemplars."""
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    services = compose["services"]
    env = compose["x-escalator-env"]
    assert env["OTEL_TRACES_EXPORTER"].startswith("${OTEL_TRACES_EXPORTER:-otlp}")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    sources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"]
    by_uid = {s["uid"]: s for s in sources}
    (link,) = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == "trace_id"  # the exemplar label the service writes (tracing.py)
    target = by_uid[link["datasourceUid"]]
    assert target["type"] == "jaeger" and target["url"] == "http://jaeger:16686"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    asks = [
        t
        for p in panels
        for t in p.get("targets", [])
        if "_seconds_bucket" in t.get("expr", "") and t.get("exemplar")
    ]
    assert asks, "no latency panel asks for exemplars"
