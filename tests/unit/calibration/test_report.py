"""Report arithmetic against hand-computed values: every token type, cache and shadow."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from escalator.calibration.report import build_report, render_text
from escalator.contract.decisions import Decision
from escalator.model.prices import load_prices
from tests.unit.calibration import worlds
from tests.unit.calibration.logs import tiny_log


def read(records: list[dict[str, Any]]) -> list[Decision]:
    """The records as the decisions log reads them back."""
    return [Decision.from_dict(r) for r in records]


PRICES = load_prices(None)  # haiku 5.5: .10/.50/.125/.01; sonnet 5.5: 2/10/2.5/.10 per MTok


def rec(
    rid: str,
    tier: str,
    tokens: tuple[int, int, int, int],
    *,
    outcome: str,
    shadow: bool = False,
    rate: float | None = None,
    label: str = "safe",
) -> dict[str, Any]:
    model = "claude-haiku-5-5" if tier == "cheap" else "claude-sonnet-5-5"
    i, o, w, r = tokens
    return {
        "id": rid,
        "outcome": outcome,
        "shadow": shadow,
        "sample_rate": rate,
        "attempt": {
            "tier": tier,
            "model": model,
            "label": label,
            "confidence": 0.9,
            "valid": True,
            "input_tokens": i,
            "output_tokens": o,
            "cache_write_tokens": w,
            "cache_read_tokens": r,
            "cost_usd": 0.0,
        },
    }


RECORDS = [
    # a: accepted; the first call wrote the cache. b: accepted, read it, and was shadowed.
    rec("a", "cheap", (100, 10, 1300, 0), outcome="accepted"),
    rec("b", "cheap", (100, 10, 0, 1300), outcome="accepted"),
    rec("b", "strong", (120, 12, 1300, 0), outcome="shadow", shadow=True, rate=0.5),
    # c: escalated; the strong call read the cache.
    rec("c", "cheap", (200, 10, 0, 1300), outcome="escalated", label="unsafe"),
    rec("c", "strong", (220, 12, 0, 1300), outcome="final", rate=1.0, label="unsafe"),
]
# By hand, USD:
CHEAP_A = (100 * 0.10 + 10 * 0.50 + 1300 * 0.125) / 1e6  # 1.775e-4
CHEAP_B = (100 * 0.10 + 10 * 0.50 + 1300 * 0.01) / 1e6  # 2.8e-5
CHEAP_C = (200 * 0.10 + 10 * 0.50 + 1300 * 0.01) / 1e6  # 3.8e-5
SHADOW_B = (120 * 2 + 12 * 10 + 1300 * 2.5) / 1e6  # 3.61e-3
STRONG_C = (220 * 2 + 12 * 10 + 1300 * 0.10) / 1e6  # 6.9e-4


def test_spend_shadow_counterfactual_and_savings() -> None:
    """Actual spend excludes shadow; the counterfactual uses observed strong costs."""
    r = build_report(read(RECORDS), PRICES, monthly_volume=3_000_000)
    assert r["actual_usd"] == pytest.approx(CHEAP_A + CHEAP_B + CHEAP_C + STRONG_C)
    assert r["shadow_usd"] == pytest.approx(SHADOW_B)
    # a has no strong answer: it is priced at the 1/p-weighted mean of the observed ones.
    mean_strong = (SHADOW_B * 2 + STRONG_C * 1) / 3
    assert r["all_strong_usd"] == pytest.approx(mean_strong + SHADOW_B + STRONG_C)
    assert r["savings_usd"] == pytest.approx(r["all_strong_usd"] - r["actual_usd"])
    assert r["monthly"]["usd"] == pytest.approx(r["actual_usd"] / 3 * 3_000_000)
    assert r["escalation_rate_by_label"] == {
        "safe": {"requests": 2, "escalated": 0, "rate": 0.0},
        "unsafe": {"requests": 1, "escalated": 1, "rate": 1.0},
    }


def test_cost_by_token_type() -> None:
    """Each token type is priced at its own rate: writes at the write rate, reads at the read."""
    r = build_report(read(RECORDS), PRICES)
    cheap = next(row for row in r["spend"] if row["tier"] == "cheap")
    assert cheap["cache_write_tokens"] == 1300 and cheap["cache_read_tokens"] == 2600
    assert cheap["cost_by_type_usd"]["cache_write"] == pytest.approx(1300 * 0.125 / 1e6)
    assert cheap["cost_by_type_usd"]["cache_read"] == pytest.approx(2600 * 0.01 / 1e6)
    assert cheap["cost_by_type_usd"]["input"] == pytest.approx(400 * 0.10 / 1e6)
    assert sum(cheap["cost_by_type_usd"].values()) == pytest.approx(cheap["cost_usd"])
    shadow = next(row for row in r["spend"] if row["shadow"])
    assert shadow["calls"] == 1 and shadow["cost_usd"] == pytest.approx(SHADOW_B)
    assert "shadow spend" in render_text(r)


def test_unknown_model_is_refused_not_zero() -> None:
    """A model missing from the price table is an error, never $0."""
    bad = rec("x", "cheap", (1, 1, 0, 0), outcome="accepted")
    bad["attempt"]["model"] = "claude-unknown-9"
    with pytest.raises(Exception, match="claude-unknown-9"):
        build_report(read([bad]), PRICES)


def test_month_to_date_spend_against_the_stated_cap() -> None:
    """Only this UTC month's decisions count (shadow included), against the stated cap, with a
    straight-line projection; without a cap the report says how to state one."""
    now = 1796526000.0  # 2026-12-06T03:00:00Z: 5 days and 3 hours into December
    december, november = 1796100000000, 1796000000000  # ms: Dec 1 04:40 and Nov 30
    stamped = [
        {**RECORDS[0], "ts_ms": november},  # last month: not counted
        {**RECORDS[1], "ts_ms": december},
        {**RECORDS[2], "ts_ms": december + 1},  # shadow: counted, the bill has it
    ]
    r = build_report(read(stamped), PRICES, spend_cap_usd=0.01, now=now)
    mtd = r["month_to_date"]
    assert mtd["month"] == "2026-12" and mtd["decisions"] == 2
    assert mtd["usd"] == pytest.approx(CHEAP_B + SHADOW_B)
    assert mtd["share_of_cap"] == pytest.approx((CHEAP_B + SHADOW_B) / 0.01)
    elapsed = now - 1796083200  # since 2026-12-01T00:00:00Z
    assert mtd["projected_usd"] == pytest.approx((CHEAP_B + SHADOW_B) * 31 * 86400 / elapsed)
    text = render_text(r)
    assert "month to date (2026-12):" in text and "of the $0.01 monthly cap" in text
    assert "2 decisions from 2026-12-01 04:40 UTC" in text  # November's is not counted
    uncapped = render_text(build_report(read(stamped), PRICES, now=now))
    assert "no monthly cap stated: ESCALATOR_MONTHLY_SPEND_CAP_USD" in uncapped


def batch(record: dict[str, Any], *, lane: str | None = "batch") -> dict[str, Any]:
    """The record as a Message Batches answer: billed at 50% (``service_tier: "batch"``)."""
    out = {**record, "attempt": {**record["attempt"], "service_tier": "batch"}}
    if lane is not None:
        out["lane"] = lane
    return out


@pytest.mark.parametrize("lane", ["batch", None])
def test_batch_answers_are_priced_at_half_and_counted_by_lane(lane: str | None) -> None:
    """A batch-billed answer is re-priced at 50% of every token type, never at full price;
    spend is split by lane (shadow included) and the batch lane's saving is the other half.
    A record written before ``lane`` existed is placed by its service tier."""
    records = [*RECORDS[:2], batch(RECORDS[2], lane=lane), *RECORDS[3:]]
    r = build_report(read(records), PRICES)
    assert r["shadow_usd"] == pytest.approx(SHADOW_B / 2)
    assert r["actual_usd"] == pytest.approx(CHEAP_A + CHEAP_B + CHEAP_C + STRONG_C)
    shadow = next(row for row in r["spend"] if row["shadow"])
    assert shadow["lane"] == "batch" and shadow["cost_usd"] == pytest.approx(SHADOW_B / 2)
    assert sum(shadow["cost_by_type_usd"].values()) == pytest.approx(SHADOW_B / 2)
    assert r["lanes"]["batch"] == pytest.approx(
        {
            "calls": 1,
            "shadow_calls": 1,
            "cost_usd": SHADOW_B / 2,
            "realtime_usd": SHADOW_B,
            "saving_usd": SHADOW_B / 2,
        }
    )
    realtime = r["lanes"]["realtime"]
    assert realtime["calls"] == 4 and realtime["saving_usd"] == 0.0
    assert realtime["cost_usd"] == pytest.approx(r["actual_usd"])
    text = render_text(r)
    assert "batch           1 calls" in text and f"saved ${SHADOW_B / 2:,.6f}" in text


def test_with_no_batch_answer_the_report_says_the_lane_was_not_used() -> None:
    """All real time: the batch lane shows 0 calls and no saving."""
    r = build_report(read(RECORDS), PRICES)
    assert r["lanes"]["batch"]["calls"] == 0 and r["lanes"]["batch"]["saving_usd"] == 0.0
    assert "ESCALATOR_BATCH_LANE is off or unused" in render_text(r)


def test_report_uses_the_same_estimators_for_agreement_as_routed() -> None:
    """report's agreement at the thresholds in force matches the truth at tau, with a bound."""
    from escalator.calibration.report import agreement_in_force

    w = worlds.realistic()
    got = agreement_in_force(
        read(worlds.records(w, np.random.default_rng(9), 8000, p=0.2, tau=0.7))
    )
    assert got is not None
    truth = w.agreement(0.7)[0]
    assert abs(got["point"] - truth) < 0.01
    assert got["lower_bound"] < got["point"] <= 1.0


def test_report_leaves_out_what_follows_a_pending_batch_measurement() -> None:
    """A request whose batch shadow is not in the log yet ends the report's agreement window:
    the later requests are left out, and the text says how many."""
    from escalator.calibration.report import agreement_in_force

    w = worlds.realistic()
    records = worlds.records(w, np.random.default_rng(9), 2000, p=0.2, tau=0.7)
    shadowed = {r["id"] for r in records if r["shadow"]}
    for r in records:
        if r["id"] in shadowed and r["attempt"]["tier"] == "cheap":  # type: ignore[index]
            r["shadow_lane"] = "batch"
    cut = sorted(shadowed, key=lambda i: int(i[1:]))[len(shadowed) // 2]
    log = [r for r in records if not (r["id"] == cut and r["shadow"])]
    got = agreement_in_force(read(log))
    assert got is not None and got["pending"] == 2000 - 1 - int(cut[1:])
    assert f"{got['pending']} later requests left out" in render_text(
        build_report(read(log), load_prices(None))
    )
    assert agreement_in_force(read(records))["pending"] == 0  # type: ignore[index]


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


def tier0(rid: str) -> dict[str, Any]:
    """A tier-0 answer: no model call, its model field is the artefact's version."""
    record = rec(rid, "cheap", (0, 0, 0, 0), outcome="accepted")
    record["attempt"] |= {"tier": "tier0", "model": "t0-0123456789"}
    record["tier0_version"] = "t0-0123456789"
    return record


def test_tier0_answers_are_not_priced_and_their_share_and_saving_are_shown() -> None:
    """The artefact version is no model of the price table (it must not be refused), spend
    and the cheap tier's figures are unchanged, and the saving is the avoided cheap calls at
    the mean re-priced cost of the real cheap calls."""
    r = build_report(read([*RECORDS, tier0("d"), tier0("e")]), PRICES)
    plain = build_report(read(RECORDS), PRICES)
    assert r["actual_usd"] == pytest.approx(plain["actual_usd"])
    assert r["requests"] == plain["requests"] == 3
    assert all(row["tier"] != "tier0" for row in r["spend"])
    mean_cheap = (CHEAP_A + CHEAP_B + CHEAP_C) / 3
    assert r["tier0"]["answered"] == 2 and r["tier0"]["share"] == pytest.approx(2 / 5)
    assert r["tier0"]["saved_usd"] == pytest.approx(2 * mean_cheap)
    assert "tier 0 answered 2 requests (40.0% of all)" in render_text(r)
    assert "tier0" not in plain and "tier 0" not in render_text(plain)


def test_a_sample_of_tier0s_answers_is_shadow_spend_and_no_request() -> None:
    """A tier-0 answer the cheap model was also asked about (ESCALATOR_TIER0_SAMPLE_RATE): its
    cheap call is priced as shadow spend; requests, actual spend and tier 0's figures are as
    without it."""
    sample = rec("d", "cheap", (100, 10, 0, 0), outcome="shadow", shadow=True, rate=0.05)
    r = build_report(read([*RECORDS, tier0("d"), sample]), PRICES)
    base = build_report(read([*RECORDS, tier0("d")]), PRICES)
    assert r["requests"] == base["requests"] == 3
    assert r["actual_usd"] == pytest.approx(base["actual_usd"])
    assert r["shadow_usd"] == pytest.approx(base["shadow_usd"] + (100 * 0.10 + 10 * 0.50) / 1e6)
    assert r["tier0"] == base["tier0"]
