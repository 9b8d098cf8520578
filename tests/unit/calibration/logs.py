"""Decisions logs for the calibration tests: reading records back, writing them, running the
CLI, and a tiny hand-made log with adjudications."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from escalator.cli.main import main
from escalator.contract.decisions import Decision
from tests.unit.calibration.human_worlds import draw, moderation, records


def read(records: list[dict[str, Any]]) -> list[Decision]:
    """The records as the decisions log reads them back."""
    return [Decision.from_dict(r) for r in records]


def cheap_record(rid: str, label: str, conf: float, outcome: str, p: float = 0.5) -> dict[str, Any]:
    return {
        "id": rid,
        "ts_ms": 1000,
        "threshold_version": "v1",
        "threshold": 0.7,
        "shadow_rate": p,
        "outcome": outcome,
        "attempt": {
            "tier": "cheap",
            "model": "c",
            "label": label,
            "confidence": conf,
            "valid": True,
            "cost_usd": 1e-5,
        },
    }


def strong_record(
    rid: str, label: str, conf: float, shadow: bool, draw: tuple[bool, float] | None = None
) -> dict[str, Any]:
    """A strong decision; ``draw``: its adjudication draw (sampled, rate), recorded."""
    rec: dict[str, Any] = {
        "id": rid,
        "ts_ms": 1001,
        "threshold_version": "v1",
        "outcome": "shadow" if shadow else "final",
        "shadow": shadow,
        "sample_rate": 0.5 if shadow else 1.0,
        "attempt": {
            "tier": "strong",
            "model": "s",
            "label": label,
            "confidence": conf,
            "valid": True,
            "cost_usd": 2e-4,
        },
    }
    if draw is not None:
        rec["adjudication"] = {"sampled": draw[0], "rate": draw[1]}
    return rec


def human_record(
    rid: str,
    gold: str | None,
    cheap: dict[str, Any],
    strong: dict[str, Any],
    *,
    s_rate: float,
    q: float,
    queue: str = "adjudication",
    reason: str | None = None,
) -> dict[str, Any]:
    agree = cheap["attempt"]["label"] == strong["attempt"]["label"]
    return {
        "id": rid,
        "ts_ms": 1002,
        "outcome": "human",
        "threshold_version": "v1",
        "sample_rate": s_rate * q,
        "gold_label": gold,
        "gold_source": "human",
        "attempt": {
            "tier": "human",
            "model": "human",
            "label": gold,
            "confidence": 1.0,
            "valid": gold is not None,
            "cost_usd": 0.0,
        },
        "review": {
            "queue": queue,
            "review_id": f"{queue}:{rid}",
            "reason": reason or ("sampled_agree" if agree else "sampled_disagree"),
            "verdict": "neither" if gold is None else "label",
            "seconds": 3.0,
            "cheap": cheap["attempt"],
            "strong": strong["attempt"],
            "agree": agree,
            "strong_sample_rate": s_rate,
            "review_rate": q,
        },
    }


def tiny_log() -> list[dict[str, Any]]:
    """Four requests (threshold 0.7, shadow rate 0.5; q_disagree 1, q_agree 0.5):
    r1 escalated, answers differ, person says B (cheap wrong, strong right), pi = 1;
    r2 escalated, answers agree on A, person says A, pi = 0.5;
    r3 accepted and shadowed, answers agree on A, person says "neither", pi = 0.25;
    r4 accepted, not shadowed (never before a person).
    Each strong record carries its adjudication draw (all three sampled)."""
    c = [
        cheap_record("r1", "A", 0.5, "escalated"),
        cheap_record("r2", "A", 0.6, "escalated"),
        cheap_record("r3", "A", 0.9, "accepted"),
        cheap_record("r4", "B", 0.95, "accepted"),
    ]
    s = [
        strong_record("r1", "B", 0.9, False, (True, 1.0)),
        strong_record("r2", "A", 0.9, False, (True, 0.5)),
    ]
    s.append(strong_record("r3", "A", 0.8, True, (True, 0.5)))
    h = [
        human_record("r1", "B", c[0], s[0], s_rate=1.0, q=1.0),
        human_record("r2", "A", c[1], s[1], s_rate=1.0, q=0.5),
        human_record("r3", None, c[2], s[2], s_rate=0.5, q=0.5),
    ]
    return [*c, *s, *h]


def without_draws(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log as the strong tier wrote it before it recorded the adjudication draw."""
    return [{k: v for k, v in r.items() if k != "adjudication"} for r in recs]


def write_log(path: Path, recs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def window(n: int, seed: int) -> list[dict[str, object]]:
    win = draw(moderation(), np.random.default_rng(seed), n, p=1.0, q_disagree=0.5, q_agree=0.2)
    return records(win)


def human_cli(log_file: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    """calibrate --objective human at the moderation world's target and budget."""
    return cli(
        "calibrate",
        "--input",
        str(log_file),
        "--output",
        str(out),
        "--objective",
        "human",
        "--target",
        "0.94",
        "--human-budget",
        "0.15",
        *extra,
    )
