"""``escalator calibrate`` end to end, both objectives (calibration/workflow.py through the CLI)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from escalator.calibration import workflow
from escalator.calibration.dataset import (
    STRONG_ONLY,
)
from escalator.calibration.threshold_file import load_threshold_file
from escalator.model.prices import load_prices
from tests.unit.calibration import human_worlds, worlds
from tests.unit.calibration.logs import (
    cli,
    human_cli,
    read,
    tiny_log,
    window,
    without_draws,
    write_log,
)


def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """A log too small to certify: exit 3, one stderr line with the needed figure, no file."""
    log_file = tmp_path / "d.jsonl"
    write_log(log_file, worlds.records(worlds.realistic(), np.random.default_rng(1), 1500, p=0.05))
    out = tmp_path / "t.json"
    code, _, err = cli("calibrate", "--input", str(log_file), "--output", str(out))
    assert code == 3
    assert len(err.strip().splitlines()) == 1
    assert "needs a fresh window of about" in err and "shadowed answers" in err
    assert not out.exists()
    # ...unless the user asks for the escalate-all fallback.
    log2 = tmp_path / "d2.jsonl"
    later = worlds.records(
        worlds.realistic(), np.random.default_rng(2), 1500, p=0.05, start_ms=1_900_000_000_000
    )
    write_log(log2, later)
    code, _, _ = cli(
        "calibrate", "--input", str(log2), "--output", str(out), "--fallback", "escalate-all"
    )
    assert code == 0 and orjson.loads(out.read_bytes())["threshold"] == STRONG_ONLY


def test_cli_certifies_records_procedure_and_window_and_refuses_reuse(tmp_path: Path) -> None:
    """A certified file carries procedure, delta, attempt and window; the same window cannot
    be used for a second attempt (the ledger), and attempt 2 spends less delta."""
    log_file = tmp_path / "d.jsonl"
    write_log(log_file, worlds.records(worlds.realistic(), np.random.default_rng(1), 6000, p=1.0))
    out = tmp_path / "t.json"
    code, stdout, _ = cli(
        "calibrate", "--input", str(log_file), "--output", str(out), "--margin", "0.3"
    )
    assert code == 0, stdout
    doc = orjson.loads(out.read_bytes())
    proc = doc["procedure"]
    assert proc["name"].startswith("fixed-sequence") and proc["delta"] == 0.05
    assert proc["attempt"] == 1 and proc["delta_spent"] == pytest.approx(0.05 * 6 / np.pi**2)
    assert "with probability at least" in proc["guarantee"]
    assert doc["window"]["first_ts_ms"] < doc["window"]["last_ts_ms"]
    esc = doc["estimates"]["escalation_rate"]
    assert esc[0] <= esc[1] <= esc[2]
    code, _, err = cli("calibrate", "--input", str(log_file), "--output", str(out))
    assert code == 3 and "overlaps attempt 1" in err
    ledger = (tmp_path / "calibration-ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 1


def test_plan_from_a_pilot_and_from_assumptions(tmp_path: Path) -> None:
    """--plan prints one row per shadow rate, fewer requests at higher rates, and costs."""
    log_file = tmp_path / "d.jsonl"
    write_log(log_file, worlds.records(worlds.realistic(), np.random.default_rng(1), 3000, p=0.2))
    code, out, _ = cli("calibrate", "--input", str(log_file), "--plan", "--ledger", "none")
    assert code == 0 and "shadow cost USD" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0.05", "0.2"))]
    assert len(rows) == 2
    requests = [int(r[1].replace(",", "")) for r in rows]
    assert requests[0] > requests[1]
    code, out, _ = cli(
        "calibrate", "--plan", "--assume-accepted", "0.8", "--assume-disagreement", "0.01",
        "--traffic-per-hour", "1000",
    )  # fmt: skip
    assert code == 0 and "Plan from assumptions" in out and "days" in out
    assert not (tmp_path / "thresholds.json").exists()


def test_cli_human_objective_certifies_and_writes_the_strong_threshold(tmp_path: Path) -> None:
    """A large enough window certifies a pair; the file carries "strong", which the service's
    loader reads into Thresholds.strong_default; the guarantee names people."""
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    write_log(log_file, window(20_000, 3))
    code, stdout, err = human_cli(log_file, out, "--ledger", "none")
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
    write_log(log_file, window(1500, 4))
    code, _, err = human_cli(log_file, out)
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
    write_log(log_file, tiny_log())
    code, _, err = cli(
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
    write_log(log_file, window(6000, 8))
    code, stdout, err = human_cli(log_file, out, "--plan")
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
    win = human_worlds.draw(
        human_worlds.moderation(),
        np.random.default_rng(12),
        20_000,
        p=1.0,
        q_disagree=0.5,
        q_agree=0.2,
        undecided=0.02,
    )
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    write_log(log_file, human_worlds.records(win))
    code, _, err = human_cli(log_file, out)
    pending = int(win.undecided.sum())
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert f"{pending} of the window's {len(win.adjudicated)} sampled adjudications" in err
    assert "try again" in err and "no attempt was spent" in err
    ledger = tmp_path / "calibration-ledger.jsonl"
    assert not out.exists() and not ledger.exists()
    code, _stdout, err = human_cli(log_file, out, "--undecided", "wrong")
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
    win = human_worlds.draw(
        human_worlds.moderation(),
        np.random.default_rng(3),
        20_000,
        p=1.0,
        q_disagree=0.5,
        q_agree=0.2,
    )
    delays = np.full(len(win.adjudicated), 3_600_000, dtype=np.int64)
    recs = human_worlds.records(win, delays_ms=delays)
    log_file, out = tmp_path / "d.jsonl", tmp_path / "t.json"
    write_log(log_file, recs)
    kept = win.data.n - 1000  # --until leaves the last 1,000 requests out
    until = str(1_795_000_000_000 + kept * 1000)
    code, stdout, err = human_cli(log_file, out, "--until", until, "--ledger", "none")
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
    write_log(log_file, window(1500, 4))
    code, _, err = human_cli(log_file, out, "--fallback", "escalate-all", "--ledger", "none")
    assert code == 0 and "cannot certify" in err
    doc = orjson.loads(out.read_bytes())
    assert doc["status"] == "fallback: escalate all" and doc["threshold"] == STRONG_ONLY
    assert "strong" not in doc and doc["procedure"]["guarantee"] == "none: refused"
    th = load_threshold_file(
        out,
        labels=("review-needed", "safe", "unsafe"),
        cheap_model="claude-haiku-5-5",
        strong_model="claude-sonnet-5-5",
    )
    assert th.default == STRONG_ONLY and th.strong_default is None


def test_cli_human_objective_without_human_decisions_says_so(tmp_path: Path) -> None:
    """A log with no human decisions (and no adjudication sampled): exit 2, one line saying
    what to turn on."""
    recs = without_draws([r for r in tiny_log() if r["attempt"]["tier"] != "human"])
    log_file = tmp_path / "d.jsonl"
    write_log(log_file, recs)
    code, _, err = cli(
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
    write_log(log_file, window(3000, 5))
    code, stdout, _ = cli(
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


def _request(output: Path, **over: Any) -> workflow.Request:
    """A Request with calibrate's defaults (as cli/measure.py builds it from the flags)."""
    given: dict[str, Any] = {
        "objective": "quality",
        "target": None,
        "delta": 0.05,
        "margin": 0.10,
        "grid": None,
        "per_label": False,
        "output": str(output),
        "ledger": None,
        "fallback": "none",
        "plan": False,
        "power": 0.8,
        "traffic_per_hour": None,
        "assume_threshold": None,
        "assume_accepted": None,
        "assume_disagreement": None,
        "strong_call_usd": None,
        "assume_strong_tokens": "1500:20",
        "human_budget": 0.05,
        "review_cost": None,
        "strong_grid": None,
        "review_labels": ("review-needed",),
        "undecided": "refuse",
        "plot": None,
        "since": None,
        "until": None,
    }
    return workflow.Request(**(given | over))


def _run(req: workflow.Request, recs: list[dict[str, object]]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    target = workflow.target_of(req)
    code = workflow.calibrate(req, target, read(recs), "test", load_prices(None), out, err)
    return code, out.getvalue(), err.getvalue()


def test_both_objectives_share_one_ledger_each_with_its_own_attempts(tmp_path: Path) -> None:
    """The workflow without the CLI, writing only to the streams it is handed: a refused
    quality attempt and a refused human attempt go to the same ledger, each numbered and
    spending within its own objective; the human window then cannot certify a second time,
    and nothing is written to stdout for that refusal."""
    out = tmp_path / "t.json"
    ledger = tmp_path / "calibration-ledger.jsonl"
    quality = worlds.records(worlds.realistic(), np.random.default_rng(1), 1500, p=0.05)
    code, stdout, err = _run(_request(out), quality)
    assert code == workflow.EXIT_REFUSED and "Calibration from test" in stdout
    assert err.startswith("calibrate: cannot certify agreement") and not out.exists()
    people = human_worlds.records(
        human_worlds.draw(
            human_worlds.moderation(),
            np.random.default_rng(4),
            1500,
            p=1.0,
            q_disagree=0.5,
            q_agree=0.2,
        )
    )
    human = _request(out, objective="human", target=0.94, human_budget=0.15)
    code, stdout, err = _run(human, people)
    assert code == workflow.EXIT_REFUSED and "Calibration on human truth" in stdout
    assert "cannot certify accuracy against people" in err and not out.exists()
    entries = [orjson.loads(line) for line in ledger.read_bytes().splitlines()]
    assert [(e["attempt"], e.get("objective", "quality")) for e in entries] == [
        (1, "quality"),
        (1, "human"),
    ]
    assert all(e["delta_spent"] == pytest.approx(0.05 * 6 / np.pi**2) for e in entries)
    code, stdout, err = _run(human, people)
    assert code == workflow.EXIT_REFUSED and stdout == ""
    assert "overlaps attempt 1" in err and len(ledger.read_bytes().splitlines()) == 2
