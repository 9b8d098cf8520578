"""Calibration on human truth: weighting, dedupe, "neither", the CLI, the threshold file, the
report's three tiers, and the promise measured against a world whose truth is known exactly.

The statistical test runs 100 repetitions of two cells at the CI scale (p = 1 and p = 0.3);
the full scale (``ESCALATOR_CALIBRATION_SCALE=full``, ``make calibration-stats``) runs 1,000 per
cell and prints the table docs/CALIBRATION.md shows:
    ESCALATOR_CALIBRATION_SCALE=full .venv/bin/python -m pytest \
        tests/unit/calibration/test_human.py -q -s -k promise
The backlog (undecided adjudications) is tested in test_human_backlog.py.
"""

from __future__ import annotations

import io
import os
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from escalator.calibration import adjudications, human
from escalator.calibration import human_certify as hc
from escalator.calibration.certify import pair_decisions
from escalator.calibration.report import build_report, render_text
from escalator.calibration.threshold_file import load_threshold_file
from escalator.cli.main import main
from escalator.contract.decisions import Decision
from escalator.errors import ConfigError
from escalator.model.prices import load_prices
from tests.unit.calibration.human_worlds import HumanWorld, draw, moderation, records


def read(records: list[dict[str, Any]]) -> list[Decision]:
    """The records as the decisions log reads them back."""
    return [Decision.from_dict(r) for r in records]


FULL = os.environ.get("ESCALATOR_CALIBRATION_SCALE") == "full"
DELTA = 0.05
REPS = 1000 if FULL else 100
#: (requests, shadow rate, q_disagree, q_agree) per cell.
CELLS = [(10_000, 1.0, 0.5, 0.2), (20_000, 0.3, 0.6, 0.3)]


def _cheap(rid: str, label: str, conf: float, outcome: str, p: float = 0.5) -> dict[str, Any]:
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


def _strong(
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


def _human(
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
        _cheap("r1", "A", 0.5, "escalated"),
        _cheap("r2", "A", 0.6, "escalated"),
        _cheap("r3", "A", 0.9, "accepted"),
        _cheap("r4", "B", 0.95, "accepted"),
    ]
    s = [_strong("r1", "B", 0.9, False, (True, 1.0)), _strong("r2", "A", 0.9, False, (True, 0.5))]
    s.append(_strong("r3", "A", 0.8, True, (True, 0.5)))
    h = [
        _human("r1", "B", c[0], s[0], s_rate=1.0, q=1.0),
        _human("r2", "A", c[1], s[1], s_rate=1.0, q=0.5),
        _human("r3", None, c[2], s[2], s_rate=0.5, q=0.5),
    ]
    return [*c, *s, *h]


def test_horvitz_thompson_and_hajek_on_a_hand_computed_log() -> None:
    """The tiny log's errors weighted by 1/pi: HT = sum(wrong / pi) / N, Hájek divides by
    sum(1 / pi) instead; worked by hand for cheap-only, strong-only and t_c = 0.7 routing."""
    recs = tiny_log()
    d = pair_decisions(read(recs))
    h = adjudications.human_sample(read(recs), d)
    assert h is not None and h.m == 3 and h.neither == 1
    assert h.q_agree == 0.5 and h.q_disagree == 1.0
    # Cells: r1 certain-differ (pi 1), r2 certain-agree (pi 0.5), r3 shadow-agree (0.25).
    assert h.pi[0].tolist() == [0.5, 1.0, 0.25, 0.5]
    t_c = np.asarray([0.0, 0.7, human.STRONG_ONLY])
    one = np.asarray([0.0])
    # cheap-only: r1 wrong (1/1), r2 right, r3 wrong (neither: 1/0.25 = 4).
    # t_c = 0.7: r1, r2 take the strong answer (both right); r3 keeps the cheap one (wrong).
    # strong-only: r1 right, r2 right, r3 wrong (4).
    ht = human.error_ht(h, t_c, one, human_tier=False)[:, 0]
    assert ht == pytest.approx([(1 + 4) / 4, 4 / 4, 4 / 4])
    total = 1 / 1 + 1 / 0.5 + 1 / 0.25  # 7: the estimated number of requests
    hajek = human.error_point(h, t_c, one, human_tier=False)[:, 0]
    assert hajek == pytest.approx([5 / total, 4 / total, 4 / total])
    # The histogram counts agree with the (m, Tc, Ts) array they replace.
    e = human.wrong(h, t_c, one, human_tier=False)
    z, _ = human.cell_counts(h, t_c, one, human_tier=False)
    assert z.sum(axis=(0, 1))[:, 0].tolist() == e.sum(axis=0)[:, 0].tolist()
    # With the human tier at t_s = 0.85, r3's strong answer (0.8) goes to a person: right.
    assert human.error_point(h, np.asarray([human.STRONG_ONLY]), np.asarray([0.85]))[0, 0] == 0.0


def test_routed_wrong_counts_match_the_full_array_on_a_random_sample() -> None:
    """The two-histogram counts per cell equal the (m, Tc, Ts) routed-wrong array summed per
    cell, for every pair, with and without the human tier."""
    win = draw(moderation(), np.random.default_rng(2), 3000, p=0.4, q_disagree=0.5, q_agree=0.3)
    h = win.human
    tc, ts = hc.grids(None, None)
    for tier in (True, False):
        strong = ts if tier else np.zeros(1)
        e = human.wrong(h, tc, strong, human_tier=tier)
        z, m = human.cell_counts(h, tc, strong, human_tier=tier)
        for g in range(4):
            mine = h.cell == g
            assert np.array_equal(z[0, g], e[mine].sum(axis=0)), g
            assert m[0, g] == mine.sum()


def test_a_sampled_adjudication_without_a_decision_is_pending_and_counted_wrong() -> None:
    """r3 sampled (its draw is on the strong record) but not decided: a pending row with no
    label, left out of the point estimate, counted wrong by the bound, and reported."""
    recs = [r for r in tiny_log() if not (r["id"] == "r3" and r["attempt"]["tier"] == "human")]
    d = pair_decisions(read(recs))
    h = adjudications.human_sample(read(recs), d)
    assert h is not None and h.m == 3 and h.decided == 2 and int(h.pending.sum()) == 1
    assert h.backlog is not None and h.backlog.pending == 1 and h.backlog.sampled == 3
    assert h.neither == 0
    top = np.asarray([human.STRONG_ONLY])
    strong_only = human.wrong(h, top, np.asarray([0.0]), human_tier=False)
    assert strong_only[h.pending].all()  # wrong whatever the strong answer
    assert not human.wrong(h, top, top)[h.pending].any()  # sent to people: right
    line = hc.pending_refusal(h)
    assert "1 of the window's 3 sampled adjudications have no decision yet" in line


def test_a_window_with_strong_answers_missing_their_draw_is_refused() -> None:
    """Some strong records carry the draw and some do not (an upgrade inside the window): the
    pending ones cannot be counted, so the sample is refused, naming --since."""
    recs = tiny_log()
    for r in recs:
        if r["id"] == "r2" and r["attempt"]["tier"] == "strong":
            del r["adjudication"]
    d = pair_decisions(read(recs))
    with pytest.raises(human.CalibrationError, match="--since"):
        adjudications.human_sample(read(recs), d)


def test_adjudication_turned_on_inside_the_window_is_refused() -> None:
    """A draw at rate 0 beside draws at 0.5 for agreeing answers: adjudication was off for part
    of the window, whose requests had no chance; refused naming the variable."""
    recs = tiny_log()
    extra = [_cheap("r5", "A", 0.55, "escalated"), _strong("r5", "A", 0.9, False, (False, 0.0))]
    d = pair_decisions(read([*recs, *extra]))
    with pytest.raises(human.CalibrationError, match="ESCALATOR_ADJUDICATE_AGREE was off"):
        adjudications.human_sample(read([*recs, *extra]), d)


def test_a_repeated_review_id_counts_once_and_review_items_are_no_sample() -> None:
    """A redelivered decision (same review_id) is ignored, the first kept; review-queue items
    are counted by reason and never enter the estimates."""
    recs = tiny_log()
    again = orjson.loads(orjson.dumps(recs[-1]))
    again["gold_label"] = "A"  # a second reviewer's different verdict: the first one stands
    cheap, strong = recs[3], _strong("r4", "B", 0.3, False, (False, 0.5))
    review = _human(
        "r4", "B", cheap, strong, s_rate=1.0, q=1.0, queue="review", reason="strong_low_confidence"
    )
    d = pair_decisions(read([*recs, again, strong, review]))
    h = adjudications.human_sample(read([*recs, again, strong, review]), d)
    assert h is not None and h.m == 3 and h.repeats == 1 and h.neither == 1
    assert h.review_items == {"strong_low_confidence": 1}


def test_human_labels_are_not_read_as_metadata_gold() -> None:
    """A person's gold_label is the human source only: the gold column stays as before."""
    d = pair_decisions(read(tiny_log()))
    assert int((d.gold >= 0).sum()) == 0


def _without_draws(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log as the strong tier wrote it before it recorded the adjudication draw."""
    return [{k: v for k, v in r.items() if k != "adjudication"} for r in recs]


def test_a_design_without_agreeing_adjudications_is_refused_in_one_line() -> None:
    """A log without draws and with no adjudicated agreeing answers: q_agree is unknown, an
    error, never a guess."""
    kept = [r for r in tiny_log() if (r["id"] != "r2" and r["id"] != "r3") or "review" not in r]
    recs = _without_draws(kept)
    d = pair_decisions(read(recs))
    with pytest.raises(human.CalibrationError, match="ESCALATOR_ADJUDICATE_AGREE"):
        adjudications.human_sample(read(recs), d)


def _write(path: Path, recs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _window(n: int, seed: int) -> list[dict[str, object]]:
    win = draw(moderation(), np.random.default_rng(seed), n, p=1.0, q_disagree=0.5, q_agree=0.2)
    return records(win)


def _human_cli(log_file: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    """calibrate --objective human at the moderation world's target and budget."""
    return _cli(
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


def test_cli_human_objective_certifies_and_writes_the_strong_threshold(tmp_path: Path) -> None:
    """A large enough window certifies a pair; the file carries "strong", which the service's
    loader reads into Thresholds.strong_default; the guarantee names people."""
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    _write(log_file, _window(20_000, 3))
    code, stdout, err = _human_cli(log_file, out, "--ledger", "none")
    assert code == 0, err
    assert "chosen: t_c=" in stdout and "accuracy against people" in stdout
    doc = orjson.loads(out.read_bytes())
    assert doc["objective"]["name"] == "human" and "people" in doc["procedure"]["guarantee"]
    assert doc["estimates"]["human_share"] <= 0.15
    assert doc["estimates"]["accuracy_vs_people"]["lower_bound"] >= 0.94
    th = load_threshold_file(
        out,
        labels=("review-needed", "safe", "unsafe"),
        cheap_model="claude-haiku-5-5",
        strong_model="claude-sonnet-5-5",
    )
    assert th.default == doc["threshold"] and th.strong_default == doc["strong"]["default"]


def test_cli_human_refusal_is_one_line_exit_3_no_file(tmp_path: Path) -> None:
    """Too few adjudications: exit 3, one stderr line naming the fresh window needed."""
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    _write(log_file, _window(1500, 4))
    code, _, err = _human_cli(log_file, out)
    assert code == 3, err
    assert len(err.strip().splitlines()) == 1
    assert "needs a fresh window of about" in err and "adjudicated answers" in err
    assert "would not help" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--human-budget", "1.5"], "--human-budget"),
        (["--review-cost", "-1"], "--review-cost"),
        (["--strong-grid", "a,b"], "--strong-grid"),
        (["--plan", "--assume-accepted", "0.5"], "pilot log"),
    ],
)
def test_cli_human_errors_are_one_line_never_a_traceback(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    """Bad flags for the human objective: exit 2 and one line on stderr."""
    log_file = tmp_path / "d.jsonl"
    _write(log_file, tiny_log())
    code, _, err = _cli(
        "calibrate",
        "--input",
        str(log_file),
        "--output",
        str(tmp_path / "t.json"),
        "--objective",
        "human",
        "--ledger",
        "none",
        *extra,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert "Traceback" not in err


def test_cli_human_plan_suggests_neyman_rates_for_the_same_people_time(tmp_path: Path) -> None:
    """--objective human --plan on a pilot: the rates now, Neyman's (differing answers
    sampled relatively more: their error rate is higher; a smaller E[X^2]) and the split the
    bound needs fewest requests with, all for the same adjudications per 1,000, each with the
    fresh window it needs; nothing written, no ledger."""
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    _write(log_file, _window(6000, 8))
    code, stdout, err = _human_cli(log_file, out, "--plan")
    assert code == 0, err
    print("\n" + stdout)  # docs/CALIBRATION.md quotes it (-s -k neyman)
    rows = {}
    for line in stdout.splitlines():
        for name in ("now", "Neyman", "fewest requests"):
            if line.startswith(f"  {name} "):
                rows[name] = line[len(name) + 2 :].split()
    now, neyman, fewest = rows["now"], rows["Neyman"], rows["fewest requests"]
    assert (float(now[0]), float(now[1])) == (0.2, 0.5)
    assert float(neyman[1]) / float(neyman[0]) > 0.5 / 0.2
    assert float(neyman[2]) < float(now[2])  # the variance falls

    def requests(row: list[str]) -> int:
        return int(row[4].replace(",", ""))

    assert requests(fewest) <= min(requests(now), requests(neyman))
    assert "Neyman" in stdout and "fresh window needed" in stdout
    assert not out.exists() and not (tmp_path / "calibration-ledger.jsonl").exists()


def test_cli_human_refuses_while_adjudications_are_undecided_and_spends_nothing(
    tmp_path: Path,
) -> None:
    """Sampled adjudications with no decision yet (default --undecided refuse): exit 3, one
    line with how many and when to retry, no file and no ledger entry (no label was read); the
    same window then certifies or refuses under --undecided wrong, recorded in the ledger."""
    win = draw(
        moderation(),
        np.random.default_rng(12),
        20_000,
        p=1.0,
        q_disagree=0.5,
        q_agree=0.2,
        undecided=0.02,
    )
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    _write(log_file, records(win))
    code, _, err = _human_cli(log_file, out)
    pending = int(win.undecided.sum())
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert f"{pending} of the window's {len(win.adjudicated)} sampled adjudications" in err
    assert "try again" in err and "no attempt was spent" in err
    ledger = tmp_path / "calibration-ledger.jsonl"
    assert not out.exists() and not ledger.exists()
    code, _stdout, err = _human_cli(log_file, out, "--undecided", "wrong")
    assert code in (0, 3), err
    entry = orjson.loads(ledger.read_bytes().splitlines()[-1])
    assert entry["undecided"] == pending and entry["attempt"] == 1
    if code == 0:
        doc = orjson.loads(out.read_bytes())
        assert doc["procedure"]["undecided_counted_wrong"] == pending
        assert (
            f"{pending} sampled adjudication(s) without a decision" in doc["procedure"]["guarantee"]
        )


def test_cli_reads_decisions_made_after_until_for_the_window_requests(tmp_path: Path) -> None:
    """Decisions arrive an hour after their request; --until at the window's end still reads
    them (for the window's own requests only), so nothing is pending and the window
    certifies; a request after --until is left out with its decision."""
    win = draw(moderation(), np.random.default_rng(3), 20_000, p=1.0, q_disagree=0.5, q_agree=0.2)
    delays = np.full(len(win.adjudicated), 3_600_000, dtype=np.int64)
    recs = records(win, delays_ms=delays)
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    _write(log_file, recs)
    kept = win.data.n - 1000  # --until leaves the last 1,000 requests out
    until = str(1_795_000_000_000 + kept * 1000)
    code, stdout, err = _human_cli(log_file, out, "--until", until, "--ledger", "none")
    assert code == 0, err
    inside = int((win.adjudicated < kept).sum())
    assert f"{kept} requests, {inside} adjudicated (" in stdout, stdout.splitlines()[0]
    assert "sampled but undecided" not in stdout
    doc = orjson.loads(out.read_bytes())
    assert doc["dataset"]["adjudicated"] == inside and doc["dataset"]["requests"] == kept


def test_cli_human_fallback_writes_an_escalate_all_file(tmp_path: Path) -> None:
    """--fallback escalate-all is honoured by the human objective: on a refusal it writes a
    file that escalates everything, with no strong threshold and no guarantee."""
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    _write(log_file, _window(1500, 4))
    code, _, err = _human_cli(log_file, out, "--fallback", "escalate-all", "--ledger", "none")
    assert code == 0 and "cannot certify" in err
    doc = orjson.loads(out.read_bytes())
    assert doc["status"] == "fallback: escalate all" and doc["threshold"] == human.STRONG_ONLY
    assert "strong" not in doc and doc["procedure"]["guarantee"] == "none: refused"
    th = load_threshold_file(
        out,
        labels=("review-needed", "safe", "unsafe"),
        cheap_model="claude-haiku-5-5",
        strong_model="claude-sonnet-5-5",
    )
    assert th.default == human.STRONG_ONLY and th.strong_default is None


def test_cli_human_objective_without_human_decisions_says_so(tmp_path: Path) -> None:
    """A log with no human decisions (and no adjudication sampled): exit 2, one line saying
    what to turn on."""
    recs = _without_draws([r for r in tiny_log() if r["attempt"]["tier"] != "human"])
    log_file = tmp_path / "d.jsonl"
    _write(log_file, recs)
    code, _, err = _cli(
        "calibrate",
        "--input",
        str(log_file),
        "--objective",
        "human",
        "--ledger",
        "none",
        "--output",
        str(tmp_path / "t.json"),
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "human decisions" in err


def test_quality_calibration_prints_the_against_people_table(tmp_path: Path) -> None:
    """With adjudications in the log the default objective also prints accuracy against
    people per threshold, strong wrong and cheap-wrong-when-confident."""
    log_file = tmp_path / "d.jsonl"
    _write(log_file, _window(3000, 5))
    code, stdout, _ = _cli(
        "calibrate",
        "--input",
        str(log_file),
        "--output",
        str(tmp_path / "t.json"),
        "--ledger",
        "none",
        "--margin",
        "1",
    )
    assert code in (0, 3)
    assert "Against people:" in stdout and "strong wrong" in stdout


def test_threshold_file_strong_key_is_optional_and_checked(tmp_path: Path) -> None:
    """Files without "strong" load as before (None); a malformed one is a ConfigError."""
    base = {
        "schema_version": 1,
        "version": "x",
        "threshold": 0.8,
        "label_thresholds": {},
        "models": {"cheap": "c", "strong": "s"},
    }
    path = tmp_path / "t.json"
    path.write_bytes(orjson.dumps(base))
    th = load_threshold_file(path, labels=("a",), cheap_model="c", strong_model="s")
    assert th.strong_default is None and dict(th.strong_per_label) == {}
    path.write_bytes(orjson.dumps({**base, "strong": {"default": 0.6, "per_label": {"a": 0.9}}}))
    th = load_threshold_file(path, labels=("a",), cheap_model="c", strong_model="s")
    assert th.strong_default == 0.6 and th.strong_for("a") == 0.9
    for bad in ({"default": "x"}, {"per_label": {"zz": 0.5}}, [1]):
        path.write_bytes(orjson.dumps({**base, "strong": bad}))
        with pytest.raises(ConfigError):
            load_threshold_file(path, labels=("a",), cheap_model="c", strong_model="s")


def test_report_three_tiers_counts_people_apart_and_prices_them() -> None:
    """Human decisions are counted by queue (each review_id once), priced at --review-cost,
    and never priced by tokens; without human decisions the report has no such section."""
    prices = load_prices(None)

    def real(r: dict[str, Any]) -> dict[str, Any]:
        model = {"cheap": "claude-haiku-5-5", "strong": "claude-sonnet-5-5"}
        a = r["attempt"]
        return {**r, "attempt": {**a, "model": model.get(a["tier"], "human")}}

    recs = [real(r) for r in tiny_log()]
    review = {
        **recs[-1],
        "id": "r9",
        "review": {
            **recs[-1]["review"],
            "queue": "review",
            "review_id": "review:r9",
            "reason": "review_label",
        },
    }
    rep = build_report(read([*recs, review, recs[-1]]), prices, review_cost=0.5)
    t = rep["three_tier"]
    assert t["human_items"] == {"review": 1, "adjudication": 3}
    assert t["repeated_decisions_ignored"] == 1
    assert t["human_usd"]["total"] == pytest.approx(2.0)
    assert t["total_usd"] == pytest.approx(t["cheap_usd"] + t["strong_usd"] + 2.0)
    assert "people, review queue" in render_text(rep)
    plain = build_report(read([r for r in recs if r["attempt"]["tier"] != "human"]), prices)
    assert "three_tier" not in plain


def _optimum(world: HumanWorld) -> tuple[float, float, float]:
    best = (human.STRONG_ONLY, human.STRONG_ONLY, 1.0)
    for ts in hc.DEFAULT_STRONG_GRID:
        for tc in human.default_grid():
            if world.accuracy(tc, ts) >= world.target and world.human_share(tc, ts) <= world.budget:
                if tc < best[0]:
                    best = (float(tc), float(ts), world.human_share(tc, ts))
    return best


def run_cell(
    world: HumanWorld,
    cell: tuple[int, float, float, float],
    reps: int,
    seed: int,
    *,
    broken: bool = False,
) -> tuple[int, int, list[float], float]:
    """(failures, refusals, chosen cheap thresholds, seconds) over ``reps`` windows.

    ``broken``: certify with the point estimate in place of the lower bound (not a bound)."""
    n, p, qd, qa = cell
    rng = np.random.default_rng(seed)
    fails = refused = 0
    chosen: list[float] = []
    started = time.monotonic()
    for _ in range(reps):
        w = draw(world, rng, n, p=p, q_disagree=qd, q_agree=qa)
        kw: dict[str, Any] = {"target": world.target, "budget": world.budget, "delta": DELTA}
        res = hc.calibrate_human(w.data, w.human, w.strong_conf, w.strong_review, **kw)
        if broken:
            res = hc.calibrate_human(
                w.data, w.human, w.strong_conf, w.strong_review, lower_override=res.accuracy, **kw
            )
        assert np.all((res.accuracy >= 0) & (res.accuracy <= 1))
        if res.status == "refused":
            refused += 1  # a refusal holds: it promises nothing
            continue
        fails += world.accuracy(res.cheap_threshold, res.strong_threshold) < world.target
        chosen.append(res.cheap_threshold)
    return fails, refused, chosen, time.monotonic() - started


def allowed_failures(reps: int) -> int:
    """The issue's requirement as it stands, at every scale: the target is met in at least
    1 - delta (95%) of the repetitions, so at most floor(delta x reps) fail (10 of 200). (The
    bound is conservative enough that no slack for sampling noise is needed here.)"""
    return int(np.floor(DELTA * reps))


@pytest.mark.timeout(3600 if FULL else 300)
def test_the_promise_holds_in_a_world_whose_truth_is_known() -> None:
    """The pair chosen by --objective human meets the accuracy target (computed exactly from
    the world) in >= 1 - delta of repetitions, in each cell; and some repetitions certify."""
    world = moderation()
    tc, ts, share = _optimum(world)
    print(f"\noptimum: t_c={tc:.2f} t_s={ts:.2f}, {share:.3f} to people")
    print("     n     p   q_dis  q_agr  reps  fails  refused  median t_c  seconds")
    for k, cell in enumerate(CELLS):
        fails, refused, chosen, secs = run_cell(world, cell, REPS, seed=77 + k)
        med = f"{np.median(chosen):.2f}" if chosen else "-"
        print(
            f"{cell[0]:>6} {cell[1]:>5g} {cell[2]:>6g} {cell[3]:>6g} {REPS:>5} {fails:>6} "
            f"{refused:>8} {med:>11} {secs:>8.1f}"
        )
        assert fails <= allowed_failures(REPS), (cell, fails)
        assert refused < REPS  # the test has power: it certifies, so it could fail


def test_the_check_fails_a_point_estimate_posing_as_a_bound() -> None:
    """The same check, with the point estimate in place of the lower bound, fails: the test
    can tell a bound from a guess."""
    reps = 200
    fails, refused, _, _ = run_cell(moderation(), CELLS[0], reps, seed=5, broken=True)
    print(f"\nbroken bound: {fails}/{reps} below the target, {refused} refused")
    assert fails > allowed_failures(reps)


def test_a_window_whose_adjudication_rate_changed_is_refused() -> None:
    """Two adjudication rates for agreeing answers in one window (on the draws; on the
    decisions, for a log without draws): the design is not one design, and the sample is
    refused naming the variable, rather than weighted wrongly."""
    changed = [dict(r) for r in tiny_log()]
    data = pair_decisions(read(changed))
    for r in changed:
        if r["id"] == "r3" and r["attempt"]["tier"] == "strong":
            r["adjudication"] = {**r["adjudication"], "rate": 0.25}
    with pytest.raises(human.CalibrationError, match="ESCALATOR_ADJUDICATE_AGREE changed"):
        adjudications.human_sample(read(changed), data)
    legacy = _without_draws([dict(r) for r in tiny_log()])
    for r in legacy:
        block = r.get("review")
        if isinstance(block, dict) and block.get("agree") and block.get("queue") == "adjudication":
            r["review"] = {**block, "review_rate": block["review_rate"] / 2}
            break
    with pytest.raises(human.CalibrationError, match="ESCALATOR_ADJUDICATE_AGREE changed"):
        adjudications.human_sample(read(legacy), data)
