"""``escalator tier0 train|certify|inspect`` (cli/tier0.py), on pairs files: what a user sees,
exit codes and the artefact written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from escalator.cli.main import main
from escalator.errors import ConfigError
from escalator.model.task import load_task
from escalator.tier0 import artefact, pairs
from tests.unit.tier0.worlds import LABELS, MODELS, WORLDS

VARIABLE = re.compile(r"^(ESCALATOR|KAFKA|ANTHROPIC|OTEL)_[A-Z0-9_]+$")
T0 = 1_765_000_000_000  # the training window's first moment (epoch ms)


@pytest.fixture
def files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A task with the world's labels, and a pairs file: 3,000 training pairs, then 6,000
    later ones, from a world with near-repeats, hard texts and noise."""
    for name in list(os.environ):
        if VARIABLE.match(name):
            monkeypatch.delenv(name)
    task = tmp_path / "task.json"
    task.write_bytes(orjson.dumps({"labels": list(LABELS), "instructions": "Classify."}))
    monkeypatch.setenv("ESCALATOR_TASK_FILE", str(task))
    rng = np.random.default_rng(7)
    world = WORLDS[0]
    train = world.pairs(3000, rng, T0)
    later = world.pairs(6000, rng, T0 + 10_000_000)
    with (tmp_path / "pairs.jsonl").open("wb") as f:
        pairs.write_jsonl([*train, *later], f)
    return tmp_path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_certify_inspect_and_the_service_loads_what_they_wrote(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Train on the first window, certify on the later one (exit 0, the guarantee printed and
    stored), inspect it; the artefact loads for the task and models it was made for."""
    data, out = files / "pairs.jsonl", files / "tier0.json"
    later = str(T0 + 10_000_000)
    code, text, err = _run(
        ["tier0", "train", "--input", str(data), "--until", later, "--output", str(out)], capsys
    )
    assert code == 0, err
    assert "trained tier 0 on 3000 pairs" in text and "answers nothing until certified" in text
    assert orjson.loads(out.read_bytes())["status"] == "trained"
    code, text, err = _run(
        [
            "tier0",
            "certify",
            "--artefact",
            str(out),
            "--input",
            str(data),
            "--since",
            later,
            "--target",
            "0.9",
        ],
        capsys,
    )
    assert code == 0, err
    assert "with probability >= " in text and "at least 90.00%" in text
    doc = orjson.loads(out.read_bytes())
    assert doc["status"] == "certified" and 0 < doc["threshold"] <= 1
    assert doc["certification"]["window"]["pairs"] == 6000
    assert doc["certification"]["estimates"]["agreement"]["lower_bound"] >= 0.9
    ledger = [
        orjson.loads(line) for line in (files / "tier0-ledger.jsonl").read_bytes().splitlines()
    ]
    assert [e["status"] for e in ledger] == ["certified"] and ledger[0]["objective"] == "tier0"
    code, text, err = _run(["tier0", "inspect", "--artefact", str(out)], capsys)
    assert code == 0 and "certified" in text and "guarantee: with probability" in text, err
    task = load_task(files / "task.json")
    loaded = artefact.load(
        out,
        task_fingerprint=task.fingerprint,
        labels=task.labels,
        cheap_model=MODELS["cheap"],
        strong_model=MODELS["strong"],
    )
    assert loaded.version == doc["version"] and loaded.threshold == doc["threshold"]
    with pytest.raises(ConfigError, match="labels or instructions changed"):
        artefact.load(
            out,
            task_fingerprint="0" * 12,
            labels=task.labels,
            cheap_model=MODELS["cheap"],
            strong_model=MODELS["strong"],
        )


def test_certify_refuses_the_training_window_a_used_window_and_a_small_one(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 3, one line each: a window overlapping training; a window an earlier attempt
    used (the ledger); a window too small to certify, with how many pairs would do."""
    data, out = files / "pairs.jsonl", files / "tier0.json"
    later = T0 + 10_000_000
    assert (
        _run(
            ["tier0", "train", "--input", str(data), "--until", str(later), "--output", str(out)],
            capsys,
        )[0]
        == 0
    )
    code, _, err = _run(["tier0", "certify", "--artefact", str(out), "--input", str(data)], capsys)
    assert code == 3 and "training never saw" in err and len(err.strip().splitlines()) == 1
    small = ["--since", str(later), "--until", str(later + 150_000)]  # 150 pairs
    code, text, err = _run(
        ["tier0", "certify", "--artefact", str(out), "--input", str(data), *small], capsys
    )
    assert code == 3 and "refused" in err and "needed: a fresh window of about" in err, err
    assert "no threshold certified" in text
    assert orjson.loads(out.read_bytes())["status"] == "trained"  # a refusal writes nothing
    code, _, err = _run(
        ["tier0", "certify", "--artefact", str(out), "--input", str(data), *small], capsys
    )
    assert code == 3 and "a window certifies once" in err


def test_bad_files_are_one_line_and_exit_2(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pairs file with a bad line; labels the task does not have; a manifest that is not
    one: exit 2, one line naming the problem, no traceback."""
    bad = files / "bad.jsonl"
    bad.write_bytes(b'{"id": "a"}\n')
    code, _, err = _run(
        ["tier0", "train", "--input", str(bad), "--output", str(files / "x.json")], capsys
    )
    assert code == 2 and "bad.jsonl:1" in err and "Traceback" not in err
    other = files / "other.jsonl"
    with other.open("wb") as f:
        pairs.write_jsonl(
            [
                pairs.Pair(str(i), "t", "refund", i, MODELS["cheap"], MODELS["strong"])
                for i in range(3)
            ],
            f,
        )
    code, _, err = _run(
        ["tier0", "train", "--input", str(other), "--output", str(files / "x.json")], capsys
    )
    assert code == 2 and "labels the task does not have: refund" in err
    (files / "not.json").write_text("[]")
    code, _, err = _run(["tier0", "inspect", "--artefact", str(files / "not.json")], capsys)
    assert (
        code == 2
        and "not a version-1 tier-0 manifest" in err
        and len(err.strip().splitlines()) == 1
    )
