"""``escalator report``: spend, shadow spend, the all-strong counterfactual, savings, escalation
rate by label and a monthly projection, computed from the decisions log.

Spend is re-priced from the logged tokens with the price table in force, each token type at
its own rate (cache writes at the write rate, cache reads at the read rate), and compared with
the cost the service recorded at call time. This is the usual back-of-envelope arithmetic
(requests x tokens x price), done from observed tokens instead of averages.

Month-to-date spend is the re-priced cost of the decisions read whose ``ts_ms`` falls in the
current UTC month (shadow calls included: the bill counts them), against the monthly spend cap
the operator states (``ESCALATOR_MONTHLY_SPEND_CAP_USD``; the tier's cap is on the Rate limits
page and in the Console, not in the Messages API), with a straight-line projection to the end
of the month. It covers only the decisions read: a source that starts after the 1st, or a
decisions topic whose retention dropped the month's start, under-counts, and the report says
from when it counts.

Each spend row is one tier, model, shadow flag and lane (``realtime``, or ``batch``: the
Message Batches API, ``ESCALATOR_BATCH_LANE``). A call is priced as it was billed: a batch
answer (``service_tier: "batch"`` on its attempt) at 50% of every token type, so the report
never re-prices it at the real-time rate. ``lanes`` adds up spend per lane, and the batch
lane's saving: what its calls would have cost in real time (the same tokens at the standard
rate) less what they cost.

Agreement of the routed answers with the strong model, at the thresholds in force when each
request was routed, uses calibration's estimators (``estimators``, ``bounds``): a Hájek
estimate within threshold-version strata and its exact lower bound (a description of the
window at 95%, not a certification: ``calibrate`` is what certifies).

Tier 0's answers (``attempt.tier`` ``tier0``, ESCALATOR_TIER0_FILE) called no model: they are
not spend rows, and ``requests`` counts the requests that reached the cheap model. ``tier0``
says how many tier 0 answered, its share of all requests (tier 0's plus the cheap tier's), and
what it saved: the cheap calls it avoided, each at the mean re-priced cost of the window's
real (not shadow) cheap calls (None when the window has none). The measurements of tier 0's
sampled answers (the cheap model's, and the strong model's where the cheap tier would have
escalated: shadow decisions at the tier-0 sample rate) are shadow spend and nothing else.
"""

from __future__ import annotations

import calendar
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

from escalator.contract.decisions import HUMAN, TIER0, Decision
from escalator.contract.messages import LANES, Attempt
from escalator.model.prices import PriceTable, Usage

TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")
TYPES = ("input", "output", "cache_write", "cache_read")


def _label_of(attempt: Attempt) -> str:
    """The cheap answer's label for the by-label table; an answer without one is named for
    why (a refusal, or an answer that failed validation), never "None"."""
    if attempt.label is not None:
        return attempt.label
    return "(refused)" if attempt.refused else "(no valid label)"


def build_report(
    records: list[Decision],
    prices: PriceTable,
    monthly_volume: int | None = None,
    *,
    review_cost: float | None = None,
    spend_cap_usd: float = 0.0,
    now: float | None = None,
) -> dict[str, Any]:
    # People are not priced by tokens: their decisions are counted apart (``human_tier``).
    humans = [r for r in records if r.tier == HUMAN]
    # Tier 0 called no model: counted apart (``tier0_saving``), never priced.
    local = {r.id for r in records if r.tier == TIER0}
    records = [r for r in records if r.tier not in (HUMAN, TIER0)]
    spend: dict[tuple[str, str, bool, str], dict[str, Any]] = {}
    cheap_by_id: dict[str, Decision] = {}
    escalated_ids: set[str] = set()
    strong_costs: list[tuple[float, float]] = []  # (cost, weight 1/sample_rate)
    strong_cost_by_id: dict[str, float] = {}
    for rec in records:
        a = rec.attempt
        tier, model, shadow, lane = a.tier, a.model, rec.shadow, rec.lane
        prices.require(model)
        usage = usage_of(a)
        row = spend.setdefault(
            (tier, model, shadow, lane),
            {
                "tier": tier,
                "model": model,
                "shadow": shadow,
                "lane": lane,
                "calls": 0,
                "recorded_usd": 0.0,
                "cost_usd": 0.0,
                "realtime_usd": 0.0,
                **dict.fromkeys(TOKEN_FIELDS, 0),
                "cost_by_type_usd": dict.fromkeys(
                    ("input", "output", "cache_write", "cache_read"), 0.0
                ),
            },
        )
        row["calls"] += 1
        row["recorded_usd"] += a.cost_usd
        row["cost_usd"] += prices.cost_usd(model, usage)
        row["realtime_usd"] += prices.cost_usd(model, replace(usage, service_tier=None))
        for f in TOKEN_FIELDS:
            row[f] += getattr(a, f)
        for kind in TYPES:
            row["cost_by_type_usd"][kind] += prices.cost_usd(model, _only(kind, usage))
        rid = rec.id
        if tier == "cheap" and not shadow:  # a shadow cheap call: tier 0's sample, spend only
            cheap_by_id[rid] = rec
            if rec.outcome == "escalated":
                escalated_ids.add(rid)
        elif tier == "strong" and a.valid and not (shadow and rid in local):
            # Not a strong shadow of a tier-0 sample: that measures tier 0 (spend only, like
            # its cheap shadow), and the counterfactual is over what the cheap tier saw.
            cost = prices.cost_usd(model, usage)
            strong_cost_by_id[rid] = cost
            strong_costs.append((cost, 1.0 / (rec.sample_rate or 1.0)))
    rows = sorted(spend.values(), key=lambda r: (r["shadow"], r["tier"], r["model"], r["lane"]))
    actual = sum(r["cost_usd"] for r in rows if not r["shadow"])
    shadow_usd = sum(r["cost_usd"] for r in rows if r["shadow"])
    n = len(cheap_by_id)
    weight = sum(w for _, w in strong_costs)
    mean_strong = sum(c * w for c, w in strong_costs) / weight if weight else None
    counterfactual = None
    if mean_strong is not None:
        counterfactual = sum(strong_cost_by_id.get(rid, mean_strong) for rid in cheap_by_id)
    by_label: dict[str, dict[str, float]] = defaultdict(lambda: {"requests": 0, "escalated": 0})
    for rid, rec in cheap_by_id.items():
        label = _label_of(rec.attempt)
        by_label[label]["requests"] += 1
        by_label[label]["escalated"] += 1 if rid in escalated_ids else 0
    for stats in by_label.values():
        stats["rate"] = stats["escalated"] / stats["requests"]
    report: dict[str, Any] = {
        "price_table_version": prices.version,
        "requests": n,
        "escalated": len(escalated_ids),
        "escalation_rate": len(escalated_ids) / n if n else None,
        "spend": rows,
        "actual_usd": actual,
        "shadow_usd": shadow_usd,
        "per_request_usd": actual / n if n else None,
        "all_strong_usd": counterfactual,
        "all_strong_basis": "observed strong cost where answered, else the 1/p-weighted mean",
        "savings_usd": None if counterfactual is None else counterfactual - actual,
        "savings_pct": None if not counterfactual else 1 - actual / counterfactual,
        "escalation_rate_by_label": dict(sorted(by_label.items())),
        "lanes": lanes(rows),
    }
    if local:
        report["tier0"] = tier0_saving(rows, len(local), n)
    report["month_to_date"] = month_to_date(records, prices, spend_cap_usd, now)
    report["agreement_in_force"] = agreement_in_force(records)
    if humans or review_cost is not None:
        report["three_tier"] = three_tier(rows, humans, review_cost)
    if monthly_volume is not None and n:
        report["monthly"] = {
            "volume": monthly_volume,
            "usd": actual / n * monthly_volume,
            "shadow_usd": shadow_usd / n * monthly_volume,
            "all_strong_usd": None
            if counterfactual is None
            else counterfactual / n * monthly_volume,
        }
    return report


def tier0_saving(rows: list[dict[str, Any]], answered: int, cheap: int) -> dict[str, Any]:
    """Tier 0's share of the requests and the cheap calls it avoided, priced at the mean
    re-priced cost of the real cheap calls of the same window."""
    real = [r for r in rows if r["tier"] == "cheap" and not r["shadow"]]
    calls = sum(r["calls"] for r in real)
    mean = sum(r["cost_usd"] for r in real) / calls if calls else None
    return {
        "answered": answered,
        "share": answered / (answered + cheap),
        "cheap_call_usd": mean,
        "saved_usd": None if mean is None else mean * answered,
    }


def lanes(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Spend per lane (shadow calls included: the bill counts them), and what the same calls
    would have cost in real time; ``saving_usd`` is the difference (0 for ``realtime``)."""
    out: dict[str, dict[str, Any]] = {}
    for lane in LANES:
        mine = [r for r in rows if r["lane"] == lane]
        cost = sum(r["cost_usd"] for r in mine)
        realtime = sum(r["realtime_usd"] for r in mine)
        out[lane] = {
            "calls": sum(r["calls"] for r in mine),
            "shadow_calls": sum(r["calls"] for r in mine if r["shadow"]),
            "cost_usd": cost,
            "realtime_usd": realtime,
            "saving_usd": realtime - cost,
        }
    return out


def month_to_date(
    records: list[Decision], prices: PriceTable, cap_usd: float, now: float | None
) -> dict[str, Any]:
    """This UTC month's spend so far (re-priced), against the stated cap, and its projection."""
    now = time.time() if now is None else now
    day = time.gmtime(now)
    start = calendar.timegm((day.tm_year, day.tm_mon, 1, 0, 0, 0, 0, 0, 0))
    year, month = day.tm_year + (day.tm_mon == 12), day.tm_mon % 12 + 1
    end = calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
    usd = 0.0
    counted = 0
    first: int | None = None
    for rec in records:
        a, ts = rec.attempt, rec.ts_ms
        if a.tier == HUMAN or not start * 1000 <= ts:
            continue
        usd += prices.cost_usd(a.model, usage_of(a))
        counted += 1
        first = ts if first is None else min(first, ts)
    elapsed = max(1.0, now - start)
    return {
        "month": f"{day.tm_year:04d}-{day.tm_mon:02d}",
        "usd": usd,
        "decisions": counted,
        "counted_from_ms": first,
        "projected_usd": usd * (end - start) / elapsed,
        "cap_usd": cap_usd or None,
        "share_of_cap": usd / cap_usd if cap_usd else None,
    }


def three_tier(
    rows: list[dict[str, Any]], humans: list[Decision], review_cost: float | None
) -> dict[str, Any]:
    """Cheap, strong and human spend: people in items (review queue and adjudication apart,
    each ``review_id`` once) and in money at ``review_cost`` USD per item when given."""
    from escalator.calibration.adjudications import human_decisions

    unique, repeats = human_decisions(humans)
    items = {"review": 0, "adjudication": 0}
    reasons: dict[str, int] = defaultdict(int)
    seconds = 0.0
    for rec in unique:
        review = rec.review
        queue = (
            "adjudication" if review is not None and review.queue == "adjudication" else "review"
        )
        items[queue] += 1
        reasons[f"{queue}:{review.reason if review is not None else None}"] += 1
        seconds += (review.seconds or 0.0) if review is not None else 0.0
    cheap = sum(r["cost_usd"] for r in rows if r["tier"] == "cheap")
    strong = sum(r["cost_usd"] for r in rows if r["tier"] == "strong")
    total_items = items["review"] + items["adjudication"]
    human_usd = None if review_cost is None else review_cost * total_items
    return {
        "cheap_usd": cheap,
        "strong_usd": strong,
        "human_items": items,
        "human_items_by_reason": dict(sorted(reasons.items())),
        "repeated_decisions_ignored": repeats,
        "reviewer_seconds": seconds,
        "review_cost_usd_per_item": review_cost,
        "human_usd": None
        if human_usd is None
        else {
            "review": review_cost * items["review"] if review_cost is not None else None,
            "adjudication": review_cost * items["adjudication"]
            if review_cost is not None
            else None,
            "total": human_usd,
        },
        "total_usd": None if human_usd is None else cheap + strong + human_usd,
    }


def agreement_in_force(records: list[Decision], delta: float = 0.05) -> dict[str, Any] | None:
    """Routed agreement with the strong model as routed (Hájek estimate, exact lower bound)."""
    import numpy as np

    from escalator.calibration import bounds, estimators
    from escalator.calibration.dataset import CalibrationError, Sample, pair_decisions

    try:
        d = pair_decisions(records)
    except CalibrationError:
        return None
    s = d.sample()
    # Shift each confidence so that "accepted as routed" is "conf >= 0": one threshold, 0.
    outcome = {r.id: r.outcome for r in records if r.tier == "cheap"}
    accepted = np.asarray([outcome.get(i) == "accepted" for i in d.ids]) & (d.conf >= 0)
    shifted = Sample(
        conf=np.where(accepted, 1.0, -1.0),
        certain=s.certain,
        sampled=s.sampled,
        disagree=s.disagree,
        stratum=s.stratum,
        tau=np.zeros(d.n),
        shadow_rate=s.shadow_rate,
    )
    c = estimators.counts(shifted, np.asarray([0.0]))
    return {
        "point": float(1.0 - estimators.point(c)[0]),
        "lower_bound": float(1.0 - bounds.upper(c, delta)[0]),
        "level": 1.0 - delta,
        "shadowed": int(d.shadowed.sum()),
        # Requests after the first whose batch measurement is not in the log yet: left out.
        "pending": d.pending,
    }


def usage_of(attempt: Attempt) -> Usage:
    """The billed usage of one logged attempt (older records lack the 1h and geo fields)."""
    return Usage(
        input_tokens=attempt.input_tokens,
        output_tokens=attempt.output_tokens,
        cache_write_tokens=attempt.cache_write_tokens,
        cache_read_tokens=attempt.cache_read_tokens,
        cache_write_1h_tokens=attempt.cache_write_1h_tokens,
        inference_geo=attempt.inference_geo,
        service_tier=attempt.service_tier,
    )


def _only(kind: str, usage: Usage) -> Usage:
    """The part of ``usage`` of one token type (cache writes keep their TTL split; the geo and
    the service tier, batch at 50%, apply to every type)."""
    none = Usage(inference_geo=usage.inference_geo, service_tier=usage.service_tier)
    if kind == "input":
        return replace(none, input_tokens=usage.input_tokens)
    if kind == "output":
        return replace(none, output_tokens=usage.output_tokens)
    if kind == "cache_write":
        return replace(
            none,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
        )
    return replace(none, cache_read_tokens=usage.cache_read_tokens)


def render_text(report: dict[str, Any], simulated_note: str = "") -> str:
    def usd(x: float | None) -> str:
        return "n/a" if x is None else f"${x:,.6f}"

    lines = [
        f"Spend report (price table {report['price_table_version']}){simulated_note}",
        f"  requests {report['requests']}, escalated {report['escalated']} "
        f"({_pct(report['escalation_rate'])})",
        "",
        "  tier    model                 shadow lane      calls    input   output  c.write"
        "  c.read        cost",
    ]
    for r in report["spend"]:
        lines.append(
            f"  {r['tier']:<7} {r['model']:<21} {('yes' if r['shadow'] else 'no'):<6} "
            f"{r['lane']:<8} "
            f"{r['calls']:>6} {r['input_tokens']:>8} {r['output_tokens']:>8} "
            f"{r['cache_write_tokens']:>8} {r['cache_read_tokens']:>7} {usd(r['cost_usd']):>12}"
        )
    lines += [
        "",
        f"  actual spend (decisions):     {usd(report['actual_usd'])}",
        f"  shadow spend (measurement):   {usd(report['shadow_usd'])}",
        f"  all-strong counterfactual:    {usd(report['all_strong_usd'])}",
        f"  savings:                      {usd(report['savings_usd'])} "
        f"({_pct(report['savings_pct'])})",
        *_lane_lines(report["lanes"], usd),
        *_tier0_lines(report.get("tier0"), usd),
        "",
    ]
    mtd = report.get("month_to_date")
    if mtd:
        since = mtd["counted_from_ms"]
        counted = (
            "no decision this month"
            if since is None
            else f"{mtd['decisions']} decisions from "
            + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(since / 1000))
        )
        cap = (
            f" of the ${mtd['cap_usd']:,.2f} monthly cap ({_pct(mtd['share_of_cap'])})"
            if mtd["cap_usd"]
            else " (no monthly cap stated: ESCALATOR_MONTHLY_SPEND_CAP_USD)"
        )
        lines += [
            f"  month to date ({mtd['month']}):     {usd(mtd['usd'])}{cap}",
            f"    projected to month end {usd(mtd['projected_usd'])}; {counted}",
            "",
        ]
    agree = report.get("agreement_in_force")
    if agree:
        lines.append(
            f"  agreement with strong, as routed: {agree['point']:.4f} (lower bound "
            f"{agree['lower_bound']:.4f} at {agree['level']:.0%}; {agree['shadowed']} shadowed)"
        )
        if agree.get("pending"):
            lines.append(
                f"    ({agree['pending']} later requests left out: a batch measurement before "
                "them is still pending)"
            )
    tiers = report.get("three_tier")
    if tiers:
        lines += _three_tier_lines(tiers, usd)
    lines += ["", "  escalation rate by cheap label:"]
    for label, s in report["escalation_rate_by_label"].items():
        lines.append(
            f"    {label:<16} {int(s['escalated']):>6}/{int(s['requests']):<6} {_pct(s['rate'])}"
        )
    monthly = report.get("monthly")
    if monthly:
        lines += [
            "",
            f"  at {monthly['volume']:,} requests/month: {usd(monthly['usd'])} "
            f"+ shadow {usd(monthly['shadow_usd'])} "
            f"(all-strong {usd(monthly['all_strong_usd'])})",
        ]
    return "\n".join(lines)


def _tier0_lines(t: dict[str, Any] | None, usd: Any) -> list[str]:
    if not t:
        return []
    return [
        "",
        f"  tier 0 answered {t['answered']} requests ({_pct(t['share'])} of all), no model "
        f"call: saved {usd(t['saved_usd'])} (cheap calls at {usd(t['cheap_call_usd'])} each)",
    ]


def _lane_lines(by_lane: dict[str, dict[str, Any]], usd: Any) -> list[str]:
    """Spend by lane, shadow calls included; the batch lane's line only when it answered."""
    batch = by_lane["batch"]
    lines = [
        "",
        "  spend by lane (shadow included):",
        f"    realtime  {by_lane['realtime']['calls']:>7} calls  "
        f"{usd(by_lane['realtime']['cost_usd'])}",
    ]
    if batch["calls"]:
        lines.append(
            f"    batch     {batch['calls']:>7} calls  {usd(batch['cost_usd'])}  (in real time "
            f"{usd(batch['realtime_usd'])}: saved {usd(batch['saving_usd'])})"
        )
    else:
        lines.append("    batch           0 calls  (ESCALATOR_BATCH_LANE is off or unused)")
    return lines


def _three_tier_lines(t: dict[str, Any], usd: Any) -> list[str]:
    items = t["human_items"]
    money = t["human_usd"]
    lines = [
        "",
        "  three tiers (shadow calls included in strong):",
        f"    cheap                       {usd(t['cheap_usd'])}",
        f"    strong                      {usd(t['strong_usd'])}",
        f"    people, review queue        {items['review']} item(s)"
        + ("" if money is None else f"  {usd(money['review'])}"),
        f"    people, adjudication        {items['adjudication']} item(s)"
        + ("" if money is None else f"  {usd(money['adjudication'])}"),
    ]
    if money is not None:
        lines.append(
            f"    total (people at {usd(t['review_cost_usd_per_item'])}/item): "
            f"{usd(t['total_usd'])}"
        )
    if t["repeated_decisions_ignored"]:
        lines.append(f"    ({t['repeated_decisions_ignored']} repeated review_id(s) ignored)")
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
