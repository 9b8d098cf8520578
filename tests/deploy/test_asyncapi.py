"""docs/asyncapi.yaml is a valid AsyncAPI 3 document (the AsyncAPI initiative's own parser,
@asyncapi/parser, from npm) and agrees with the service's defaults and schemas."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from escalator.config import load_settings
from tests.deploy.tools import ROOT, TOOLS, tool

DOCUMENT = ROOT / "docs/asyncapi.yaml"
SCHEMAS = ROOT / "service/escalator/contract/schemas"
SCRIPT = Path(__file__).with_name("asyncapi_check.mjs")


def parse(document: Path) -> dict[str, Any]:
    if not (TOOLS / "node_modules/@asyncapi/parser").exists():
        raise AssertionError("@asyncapi/parser is not installed: run `make tools`")
    proc = subprocess.run(
        [tool("node"), str(SCRIPT), str(document), str(SCHEMAS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "ESCALATOR_TOOLS": str(TOOLS)},
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_the_document_is_valid_asyncapi_3() -> None:
    out = parse(DOCUMENT)
    problems = [d for d in out["diagnostics"] if d["severity"] <= 1]  # errors and warnings
    assert out["valid"] and not problems, problems
    assert out["requestRequired"] == ["id", "text"]  # the request schema was resolved


def test_the_document_matches_the_service_defaults() -> None:
    out = parse(DOCUMENT)
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "ANTHROPIC_API_KEY": "x"})
    t = settings.topics
    assert sorted(out["channels"]) == sorted(t.all())
    doc = yaml.safe_load(DOCUMENT.read_text())
    groups = {
        op["channel"]["$ref"].rsplit("/", 1)[1]: op["bindings"]["kafka"]["groupId"]["enum"][0]
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    assert groups == {
        "requests": settings.pipeline.cheap_group,
        "escalations": settings.pipeline.strong_group,
        "reviews": settings.review.group,
        "parked": settings.parking.replay_group,
        "handoff": settings.lane.group,
    }
    referenced = {
        Path(m["payload"]["schema"]["$ref"]).name
        for m in doc["components"]["messages"].values()
        if "schema" in m.get("payload", {})
    } | {
        Path(doc["components"]["messages"][name]["headers"]["schema"]["$ref"]).name
        for name in ("deadLetter", "parkedRecord")
    }
    assert referenced == {p.name for p in SCHEMAS.glob("*.json")}


def test_the_parser_rejects_a_broken_document(tmp_path: Path) -> None:
    doc = yaml.safe_load(DOCUMENT.read_text())
    doc["operations"]["cheapReceivesRequests"]["action"] = "consume"  # not an AsyncAPI action
    broken = tmp_path / "asyncapi.yaml"
    # Keep the relative schema references resolvable from the copy.
    for message in doc["components"]["messages"].values():
        for part in ("payload", "headers"):
            ref = message.get(part, {}).get("schema", {}).get("$ref")
            if ref:
                message[part]["schema"]["$ref"] = str((DOCUMENT.parent / ref).resolve())
    broken.write_text(yaml.safe_dump(doc))
    out = parse(broken)
    assert not out["valid"] or any(d["severity"] == 0 for d in out["diagnostics"])
