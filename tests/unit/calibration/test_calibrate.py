"""Calibration on synthetic decision logs whose truth is known by construction."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from escalator.calibration import estimates, plan
from escalator.calibration.certify import (
    STRONG_ONLY,
    baselines,
    calibrate,
    curve,
    fixed_sequence,
    pair_decisions,
)
from escalator.cli.main import main
from escalator.contract.decisions import Decision
from tests.unit.calibration.worlds import LABELS, log, overconfident, realistic, records


def read(records: list[dict[str, Any]]) -> list[Decision]:
    """The records as the decisions log reads them back."""
    return [Decision.from_dict(r) for r in records]


def test_estimates_stay_in_zero_one_and_are_consistent_at_p_0_2() -> None:
    """Hájek agreement at p = 0.2 is never outside [0, 1] and its mean is near the truth."""
    w = realistic()
    rng = np.random.default_rng(7)
    t = np.asarray([0.0, 0.5, 0.8, 0.9, 0.99, STRONG_ONLY])
    means = []
    for _ in range(100):
        c = curve(log(w, rng, 2000, p=0.2), t)
        for arr in (c.agreement, c.agreement_lower, c.escalation, c.accuracy):
            assert arr is not None and np.all((arr >= 0) & (arr <= 1))
        assert np.all(c.agreement_lower <= c.agreement + 1e-12)
        means.append(c.agreement[3])
    assert abs(np.mean(means) - w.agreement(0.9)[0]) < 0.002


def test_tiny_shadow_samples_cannot_push_agreement_above_one() -> None:
    """Ten requests at p = 0.05 (the old 1/p estimator gave > 1 here): still in [0, 1]."""
    for seed in range(50):
        d = log(realistic(), np.random.default_rng(seed), 10, p=0.05, tau=0.5)
        c = curve(d, np.asarray([0.0, 0.6, STRONG_ONLY]))
        assert np.all((c.agreement >= 0) & (c.agreement <= 1))


def test_fixed_sequence_stops_at_the_first_failure_from_the_top() -> None:
    """A failure in the middle stops the walk, even if lower thresholds would pass again."""
    lower = np.asarray([0.99, 0.99, 0.90, 0.99, 0.99, 1.0])
    assert fixed_sequence(lower, 0.98) == 3
    assert fixed_sequence(np.asarray([0.5, 0.5, 1.0]), 0.98) == 2


def test_certified_threshold_meets_the_target_and_says_what_it_promises() -> None:
    """At n = 10,000, p = 1 the calibrator certifies, near the optimum, a threshold whose true
    agreement reaches the target."""
    w = realistic()
    cal = calibrate(log(w, np.random.default_rng(1), 10_000, p=1.0), target=w.target)
    assert cal.status == "certified"
    assert w.agreement(cal.threshold)[0] >= w.target
    _, e_opt = w.optimum()
    assert w.escalation(cal.threshold)[0] - e_opt < 0.1
    assert cal.curve.agreement_lower[cal.chosen] >= w.target


def test_refuses_when_the_data_are_too_few_and_says_how_much_more() -> None:
    """2,000 requests at p = 0.05 cannot certify 0.98: refused, with a finite 'needed'."""
    w = realistic()
    d = log(w, np.random.default_rng(2), 2000, p=0.05)
    cal = calibrate(d, target=w.target)
    assert cal.status == "refused" and cal.threshold == STRONG_ONLY and cal.reason
    need = plan.needed(d, cal, cal.delta)
    assert need.requests is not None and need.requests > d.n
    assert need.shadowed is not None and 0 < need.shadowed < need.requests


def test_overconfident_world_is_refused_or_certified_high() -> None:
    """Where agreement stays low at high confidence, the chosen threshold escalates most."""
    w = overconfident()
    cal = calibrate(log(w, np.random.default_rng(3), 10_000, p=1.0), target=w.target)
    assert w.agreement(cal.threshold)[0] >= w.target
    assert w.escalation(cal.threshold)[0] > 0.75


def test_mixed_threshold_versions_and_shadow_rates_are_estimated_per_stratum() -> None:
    """A log with a p = 1 window at threshold 0.5 and a p = 0.05 window at 0.8 estimates
    agreement as well as either design alone, and never outside [0, 1]."""
    w = realistic()
    rng = np.random.default_rng(11)
    recs = records(w, rng, 3000, p=1.0, tau=0.5, version="v1", prefix="a")
    recs += records(
        w, rng, 6000, p=0.05, tau=0.8, version="v2", prefix="b", start_ms=1_800_000_000_000
    )
    d = pair_decisions(read(recs))
    assert d.strata == ("v1", "v2")
    c = curve(d, np.asarray([0.6, 0.85, STRONG_ONLY]))
    assert np.all((c.agreement >= 0) & (c.agreement <= 1))
    assert abs(c.agreement[1] - w.agreement(0.85)[0]) < 0.01
    assert np.all(c.agreement_lower[:2] < w.agreement(np.asarray([0.6, 0.85])))


def test_rate_and_budget_objectives_hit_their_constraints() -> None:
    """rate stays at or under the escalation target; budget stays within its cost, agreement max."""
    d = log(realistic(), np.random.default_rng(3), 3000, p=0.5)
    rate = calibrate(d, objective="rate", target=0.3)
    assert 0.25 < rate.curve.escalation[rate.chosen] <= 0.3
    budget = calibrate(d, objective="budget", target=0.05)
    c = budget.curve
    assert c.cost_per_1k[budget.chosen] <= 0.05
    assert c.agreement[budget.chosen] == pytest.approx(c.agreement[c.cost_per_1k <= 0.05].max())


def test_baselines_bracket_the_routed_curve() -> None:
    """Cheap-only is cheapest; the oracle agrees fully for less than strong-only; random
    escalation at the chosen rate agrees less than the threshold."""
    d = log(realistic(), np.random.default_rng(4), 5000, p=1.0)
    cal = calibrate(d, target=0.97, margin=1.0)
    rate = float(cal.curve.escalation[cal.chosen])
    b = baselines(d, rate)
    assert b.cheap_only["cost_per_1k"] < b.oracle["cost_per_1k"] < b.strong_only["cost_per_1k"]
    assert b.oracle["agreement"] == 1.0 and b.strong_only["agreement"] == 1.0
    assert b.random_same_rate["agreement"] < cal.curve.agreement[cal.chosen]


def test_per_label_thresholds_report_a_label_with_too_few_answers() -> None:
    """A label with a handful of answers is reported as not certified and escalates all;
    the others get certified thresholds of their own."""
    d = log(realistic(), np.random.default_rng(5), 12_000, p=1.0)
    rare = LABELS.index("review-needed")
    keep = (d.cheap_label != rare) | (np.arange(d.n) % 200 == 0)
    cal = calibrate(d.subset(keep), target=0.97, per_label=True)
    by = {r.label: r for r in cal.labels}
    assert not by["review-needed"].certified
    assert cal.label_thresholds["review-needed"] == STRONG_ONLY
    assert by["safe"].certified and by["safe"].threshold < 1
    assert cal.status == "certified"


def test_pairing_from_decision_records() -> None:
    """Cheap and strong records pair by id; the design comes from outcome and shadow_rate,
    or, in older logs, from the version's shadow sample_rate; failed answers count."""

    def rec(rid: str, tier: str, label: str | None, **kw: object) -> dict[str, object]:
        return {
            "id": rid,
            "attempt": {
                "tier": tier,
                "model": f"m-{tier}",
                "label": label,
                "confidence": kw.get("conf", 0.9),
                "valid": label is not None,
                "cost_usd": 0.001,
            },
            "outcome": kw.get("outcome"),
            "shadow": bool(kw.get("shadow")),
            "sample_rate": kw.get("rate"),
            "gold_label": kw.get("gold"),
            "threshold_version": "v1",
            "ts_ms": 1,
        }

    d = pair_decisions(
        read(
            [
                rec("a", "cheap", "safe", conf=0.9, outcome="accepted", gold="safe"),
                rec("a", "strong", "safe", outcome="shadow", shadow=True, rate=0.25),
                rec("b", "cheap", "unsafe", conf=0.4, outcome="escalated"),
                rec("b", "strong", None, outcome="refused"),
                rec("c", "cheap", "safe", conf=0.99, outcome="accepted"),
                rec("d", "cheap", None, outcome="escalated"),
                rec("d", "strong", "safe", outcome="final", rate=1.0),
            ]
        )
    )
    assert d.ids == ["a", "b", "c", "d"]
    assert list(d.certain) == [False, True, False, True]
    assert list(d.answered) == [True, True, False, True]
    assert list(d.shadow_rate[:1]) == [0.25]  # inferred from the shadow record
    assert d.conf[3] == -1.0  # an invalid cheap answer escalates at every threshold
    s = d.sample()
    assert s.disagree[1]  # the refused strong answer was due: it counts against agreement
    assert d.gold[0] == d.labels.index("safe") and d.gold[1] == -1


def test_allocation_never_exceeds_delta_and_follows_the_design() -> None:
    """The parts' error budgets sum to delta; no certain part is paid for where none can be."""
    d = log(realistic(), np.random.default_rng(6), 2000, p=0.2, tau=0.7)
    t = np.asarray([0.5, 0.8])
    c = estimates.counts(d.sample(), t)
    dc, da, dd = estimates.allocation(c, 0.05)
    assert np.allclose((dc + da + dd).sum(axis=0), 0.05)
    assert dc[0, 0] > 0 and dc[0, 1] == 0  # below tau escalated answers are certain


def _write(path: Path, recs: list[dict[str, object]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """A log too small to certify: exit 3, one stderr line with the needed figure, no file."""
    log_file = tmp_path / "d.jsonl"
    _write(log_file, records(realistic(), np.random.default_rng(1), 1500, p=0.05))
    out = tmp_path / "t.json"
    code, _, err = _cli("calibrate", "--input", str(log_file), "--output", str(out))
    assert code == 3
    assert len(err.strip().splitlines()) == 1
    assert "needs a fresh window of about" in err and "shadowed answers" in err
    assert not out.exists()
    # ...unless the user asks for the escalate-all fallback.
    log2 = tmp_path / "d2.jsonl"
    later = records(realistic(), np.random.default_rng(2), 1500, p=0.05, start_ms=1_900_000_000_000)
    _write(log2, later)
    code, _, _ = _cli(
        "calibrate", "--input", str(log2), "--output", str(out), "--fallback", "escalate-all"
    )
    assert code == 0 and orjson.loads(out.read_bytes())["threshold"] == STRONG_ONLY


def test_cli_certifies_records_procedure_and_window_and_refuses_reuse(tmp_path: Path) -> None:
    """A certified file carries procedure, delta, attempt and window; the same window cannot
    be used for a second attempt (the ledger), and attempt 2 spends less delta."""
    log_file = tmp_path / "d.jsonl"
    _write(log_file, records(realistic(), np.random.default_rng(1), 6000, p=1.0))
    out = tmp_path / "t.json"
    code, stdout, _ = _cli(
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
    code, _, err = _cli("calibrate", "--input", str(log_file), "--output", str(out))
    assert code == 3 and "overlaps attempt 1" in err
    ledger = (tmp_path / "calibration-ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 1


def test_calibrate_help_documents_every_flag_and_default() -> None:
    """--help names each option with its default, including --output's thresholds.json."""
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = " ".join(buf.getvalue().split())
    for flag in (
        "--objective", "--target", "--delta", "--margin", "--grid", "--per-label", "--output",
        "--ledger", "--fallback", "--plan", "--power", "--traffic-per-hour", "--assume-threshold",
        "--assume-accepted", "--assume-disagreement", "--strong-call-usd",
        "--assume-strong-tokens", "--plot", "--input", "--since", "--until",
    ):  # fmt: skip
        assert flag in text
    assert "(default: thresholds.json)" in text and "(default: 0.05)" in text


def test_plan_from_a_pilot_and_from_assumptions(tmp_path: Path) -> None:
    """--plan prints one row per shadow rate, fewer requests at higher rates, and costs."""
    log_file = tmp_path / "d.jsonl"
    _write(log_file, records(realistic(), np.random.default_rng(1), 3000, p=0.2))
    code, out, _ = _cli("calibrate", "--input", str(log_file), "--plan", "--ledger", "none")
    assert code == 0 and "shadow cost USD" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0.05", "0.2"))]
    assert len(rows) == 2
    requests = [int(r[1].replace(",", "")) for r in rows]
    assert requests[0] > requests[1]
    code, out, _ = _cli(
        "calibrate", "--plan", "--assume-accepted", "0.8", "--assume-disagreement", "0.01",
        "--traffic-per-hour", "1000",
    )  # fmt: skip
    assert code == 0 and "Plan from assumptions" in out and "days" in out
    assert not (tmp_path / "thresholds.json").exists()


def test_report_uses_the_same_estimators_for_agreement_as_routed() -> None:
    """report's agreement at the thresholds in force matches the truth at tau, with a bound."""
    from escalator.calibration.report import agreement_in_force

    w = realistic()
    got = agreement_in_force(read(records(w, np.random.default_rng(9), 8000, p=0.2, tau=0.7)))
    assert got is not None
    truth = w.agreement(0.7)[0]
    assert abs(got["point"] - truth) < 0.01
    assert got["lower_bound"] < got["point"] <= 1.0


def test_threshold_body_short_form_is_the_full_form_less_its_detail(tmp_path: Path) -> None:
    """The demo's short form (detail=False) keeps every value the full form has under the same
    keys, drops only the detail, and loads to the same thresholds."""
    from escalator.calibration.threshold_file import (
        load_threshold_file,
        threshold_body,
        write_threshold_file,
    )

    d = log(realistic(), np.random.default_rng(4), 4000, p=1.0)
    cal = calibrate(d, target=0.95, delta=0.05)
    base = baselines(d, float(cal.curve.escalation[cal.chosen]))
    common: dict[str, Any] = {
        "source": "test",
        "delta": 0.05,
        "window": {"first_ts_ms": 0, "last_ts_ms": 1},
        "price_table_version": "p1",
        "base": base,
    }
    full = threshold_body(cal, d, **common)
    short = threshold_body(cal, d, **common, detail=False)
    assert set(full) - set(short) == {"labels", "baselines"}
    assert set(full["procedure"]) - set(short["procedure"]) == {
        "delta_spent",
        "spending",
        "ledger",
        "margin",
        "guarantee",
        "assumptions",
    }
    assert short["procedure"] == {k: full["procedure"][k] for k in short["procedure"]}
    assert short["dataset"] == {k: full["dataset"][k] for k in ("sha256", "requests")}
    for key in set(short) - {"procedure", "dataset"}:
        assert short[key] == full[key], key
    loaded = []
    for name, body in (("full", full), ("short", short)):
        write_threshold_file(tmp_path / name, body)
        t = load_threshold_file(
            tmp_path / name, labels=tuple(LABELS), cheap_model="cheap", strong_model="strong"
        )
        loaded.append((t.default, t.per_label, t.expected_escalation))
    assert loaded[0] == loaded[1] and loaded[0][0] == cal.threshold
