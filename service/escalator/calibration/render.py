"""The render stage: what a calibration looks like to a person, for either objective: the
tables ``escalator calibrate`` prints, the guarantee sentence and its assumptions, the refusal
line, the measurement plans and the cost-against-agreement plot.

``escalator calibrate`` (calibration/workflow.py) and ``escalator demo`` (escalator_dev/demo.py)
both print these; neither owns them. Nothing here computes a bound or chooses a threshold
(``search``, ``sizing`` and ``plan`` do); this module only turns their results into text or a
PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import numpy as np

from escalator.calibration import estimators, plan, sizing
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.curves import Baselines, PeopleCurve
from escalator.calibration.dataset import Dataset
from escalator.calibration.plan import AdjudicationPlan
from escalator.calibration.search import Calibration, HumanCalibration

#: How every refusal line ends.
REFUSAL_TAIL = (
    "; wrote no thresholds file (--fallback escalate-all writes one that escalates everything)"
)


def guarantee(result: Calibration, delta: float) -> str:
    """The sentence a certified calibration promises (also stored in the threshold file)."""
    if result.status == "refused":
        return "none: refused"
    scope = (
        "for each cheap label, agreement among that label's answers"
        if result.labels
        else ("agreement")
    )
    return (
        f"with probability at least {1 - delta:.6g} over the measurement window, {scope} with "
        f"the strong model at the chosen threshold is at least {result.target}"
    )


def refusal(result: Calibration, need: sizing.Need) -> str:
    """One line: why the target cannot be certified, and how much more measurement would."""
    head = (
        f"calibrate: cannot certify agreement >= {result.target} at delta {result.delta:.3g}: "
        f"{result.reason}"
    )
    tail = REFUSAL_TAIL
    if need.requests is None:
        if need.p <= 0:
            why = (
                "no shadow sampling in force (ESCALATOR_SHADOW_RATE=0): accepted answers are "
                "never compared, so no amount of data at this design can certify a threshold "
                "that accepts anything"
            )
        elif need.goal_threshold is None:
            why = (
                "no threshold that accepts anything has an estimated agreement at the target on "
                "this window, so the size of a window that would certify one cannot be "
                "estimated from it"
            )
        else:
            why = f"needs a fresh window of more than {sizing.MAX_REQUESTS:,} requests"
        return f"{head}; {why}{tail}"
    rate = "" if need.per_hour is None else f" at {need.per_hour:,.0f} requests/h"
    return (
        f"{head}; needs a fresh window of about {need.requests:,} requests with "
        f"{need.shadowed:,} shadowed answers (shadow rate {need.p:g}, threshold {need.tau:g}; "
        f"{sizing.duration(need.hours)}{rate}) to certify t={need.goal_threshold:.2f} "
        f"(escalating about {need.goal_escalation:.0%}){tail}"
    )


def plan_table(
    data: Dataset,
    result: Calibration,
    *,
    call_usd: float | None,
    delta: float,
    power: float,
    assume_threshold: float | None = None,
    traffic_per_hour: float | None = None,
) -> str:
    """The plan from a pilot log: per shadow rate, what certifying the target takes.

    ``assume_threshold`` and ``traffic_per_hour`` replace the window's own (its most recent
    threshold, its observed rate) when given."""
    t = result.curve.thresholds
    prof, cautious = sizing.pilot(data, t, estimators.counts(data.sample(), t))
    tau, _, per_hour = sizing.design_in_force(data)
    tau = assume_threshold if assume_threshold is not None else tau
    per_hour = traffic_per_hour or per_hour
    goal = sizing.goal_index(prof, result.target, result.margin)
    shadow_disagree = int((data.shadowed & (data.strong_label != data.cheap_label)).sum())
    rough = "; too few for more than a rough plan" if shadow_disagree < 20 else ""
    lines = [
        f"Plan from a pilot of {data.n} requests ({int(data.shadowed.sum())} shadowed, "
        f"{shadow_disagree} of them disagreeing{rough}), "
        f"target {result.target}, delta {delta:.3g} (the next attempt's share), margin "
        f"{result.margin:.0%}, power {power:.0%}; measuring at threshold {tau:g}",
    ]
    if goal is None:
        lines.append("  no threshold's estimated agreement reaches the target: only escalate-all")
        return "\n".join(lines)
    best = sizing.goal_index(prof, result.target, 0.0)
    esc = prof.escalation()
    lines.append(
        f"  best achievable by estimate: t={t[best]:.2f}, escalating {esc[best]:.1%}; "
        f"goal: certify t={t[goal]:.2f} (escalating {esc[goal]:.1%}) or lower"
    )
    lines += plan_rows(cautious, prof, tau, result.target, delta, per_hour, call_usd, goal, power)
    return "\n".join(lines)


def plan_rows(
    cautious: sizing.Profile,
    prof: sizing.Profile,
    tau: float,
    target: float,
    delta: float,
    per_hour: float | None,
    call_usd: float | None,
    goal: int,
    power: float,
) -> list[str]:
    """The plan's table, one row per shadow rate (``plan.rows``)."""
    lines = ["", "  shadow rate    requests   shadowed    duration    shadow cost USD"]
    for row in plan.rows(
        cautious,
        prof,
        tau,
        target,
        delta,
        goal,
        per_hour=per_hour,
        strong_call_usd=call_usd,
        power=power,
    ):
        if row.requests is None or row.shadowed is None:
            lines.append(f"  {row.p:>11g}    more than {sizing.MAX_REQUESTS:,} requests")
            continue
        cost = "n/a" if row.shadow_usd is None else f"{row.shadow_usd:,.4f}"
        lines.append(
            f"  {row.p:>11g}  {row.requests:>10,}  {row.shadowed:>9,}  "
            f"{sizing.duration(row.hours):>10}  {cost:>17}"
        )
    lines.append(
        "  (escalated requests get their strong answer anyway; only shadowed ones cost extra)"
    )
    return lines


def calibration_table(data: Dataset, result: Calibration, base: Baselines, source: str) -> str:
    """The curve on a sample of the grid, the chosen point marked, and the four baselines."""
    c = result.curve
    gold = c.accuracy is not None
    lines = [
        f"Calibration from {source}: {data.n} requests, {int(data.observed.sum())} with a strong "
        f"answer ({int(data.shadowed.sum())} shadowed), {int((data.gold >= 0).sum())} with a gold "
        f"label ({data.cheap_model} -> {data.strong_model})",
        f"objective: {result.objective}, target {result.target}; agreement: Hajek estimate and "
        f"exact lower bound at level {1 - c.delta:.4g}",
        "",
        "  threshold  escalated  agreement  lower bound  "
        + ("accuracy  " if gold else "")
        + "cost/1k USD",
    ]
    step = max(1, len(c.thresholds) // 25)
    marks = {result.chosen: " <- chosen"}
    if result.status == "refused":
        marks = {result.certified: " <- lowest certified", result.best: " <- best estimate"}
    show = sorted({*range(0, len(c.thresholds), step), len(c.thresholds) - 1, *marks})
    for i in show:
        t = c.thresholds[i]
        label = "all" if t > 1 else f"{t:.2f}"
        row = (
            f"  {label:>9}  {c.escalation[i]:>9.3f}  {c.agreement[i]:>9.4f}  "
            f"{c.agreement_lower[i]:>11.4f}  "
        )
        if c.accuracy is not None:
            row += f"{c.accuracy[i]:>8.4f}  "
        lines.append(row + f"{c.cost_per_1k[i]:>11.5f}{marks.get(i, '')}")
    lines += ["", "  baselines (same data):   escalated  agreement  accuracy  cost/1k USD"]
    for name, b in (
        ("cheap-only", base.cheap_only),
        ("strong-only", base.strong_only),
        ("random, same rate", base.random_same_rate),
        ("oracle", base.oracle),
    ):
        acc = "n/a" if b["accuracy"] is None else f"{b['accuracy']:.4f}"
        lines.append(
            f"  {name:<23} {b['escalation']:>9.3f}  {b['agreement']:>9.4f}  "
            f"{acc:>8}  {b['cost_per_1k']:.5f}"
        )
    for r in result.labels:
        state = (
            f"t={r.threshold:.2f}, escalating {r.escalation:.1%}"
            if r.certified
            else f"not certified: {r.answers} answers, {r.shadowed} shadowed are too few; "
            "escalates everything"
        )
        lines.append(f"  label {r.label}: {state}")
    if result.status == "certified":
        lines.append(f"\n  {guarantee(result, c.delta)}")
    return "\n".join(lines)


def plot(path: Path, result: Calibration, base: Baselines) -> str:
    """Cost against agreement as a PNG; one line saying where, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: install the optional extra (pip install 'escalator[plot]')"
    c = result.curve
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(c.cost_per_1k, c.agreement, "-", label="threshold grid (estimate)")
    ax.plot(
        c.cost_per_1k,
        c.agreement_lower,
        "--",
        label=f"lower bound, level {1 - c.delta:.3g}",
    )
    for name, b, marker in (
        ("cheap-only", base.cheap_only, "v"),
        ("strong-only", base.strong_only, "^"),
        ("random, same rate", base.random_same_rate, "x"),
        ("oracle", base.oracle, "*"),
    ):
        # Only accuracy can be None in a baseline; cost and agreement are always numbers.
        cost, agreement = cast(float, b["cost_per_1k"]), cast(float, b["agreement"])
        ax.plot(cost, agreement, marker, markersize=9, label=name)
    i = result.chosen
    ax.plot(
        c.cost_per_1k[i],
        c.agreement[i],
        "o",
        color="black",
        markersize=9,
        label=f"chosen t={c.thresholds[i]:.2f}",
    )
    if result.objective == "quality":
        ax.axhline(result.target, linestyle=":", color="grey", label=f"target {result.target}")
    ax.set_xlabel("cost per 1,000 requests (USD)")
    ax.set_ylabel("agreement with the strong model")
    ax.set_title("Escalator calibration: cost against agreement")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"plot: {path}"


def people_table(h: HumanSample, pc: PeopleCurve) -> str:
    """Against people, per cheap threshold (routed as today: the strong answer below t)."""
    lines = [
        "",
        f"Against people: {h.decided} adjudicated requests{_undecided(h)} (Horvitz-Thompson "
        f"weights 1/pi; q_agree {h.q_agree:g}, q_disagree {h.q_disagree:g}; {h.neither} "
        "'neither'), "
        f"{sum(h.review_items.values())} review-queue decisions (chosen by rule: counted, not "
        f"a sample){_repeats(h)}",
        f"  accuracy: Hajek estimate (decided ones) and lower bound at level {1 - pc.delta:.4g} "
        "(betting, undecided ones counted wrong); strong wrong: among escalated; cheap wrong: "
        "among conf >= t",
        "",
        "  threshold  accuracy  lower bound  strong wrong  cheap wrong",
    ]
    step = max(1, len(pc.thresholds) // 25)
    for i in sorted({*range(0, len(pc.thresholds), step), len(pc.thresholds) - 1}):
        t = pc.thresholds[i]
        label = "all" if t > 1 else f"{t:.2f}"
        lines.append(
            f"  {label:>9}  {pc.accuracy[i]:>8.4f}  {pc.accuracy_lower[i]:>11.4f}  "
            f"{_share(pc.strong_wrong[i]):>12}  {_share(pc.cheap_wrong_confident[i]):>11}"
        )
    return "\n".join(lines)


def _undecided(h: HumanSample) -> str:
    if not h.draws_recorded:
        return (
            " (no adjudication draws in the log: undecided ones are invisible, and the bound "
            "assumes none)"
        )
    pending = int(h.pending.sum())
    return f" and {pending} sampled but undecided" if pending else ""


def _share(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.4f}"


def _repeats(h: HumanSample) -> str:
    parts = []
    if h.repeats:
        parts.append(f"{h.repeats} repeated review_id(s) ignored")
    if h.unmatched:
        parts.append(f"{h.unmatched} adjudication(s) of requests outside the window left out")
    return "" if not parts else "; " + "; ".join(parts)


def human_table(data: Dataset, h: HumanSample, result: HumanCalibration, source: str) -> str:
    """The human objective: per strong threshold, the cheapest certified cheap threshold."""
    lines = [
        f"Calibration on human truth from {source}: {data.n} requests, {h.decided} adjudicated"
        f"{_undecided(h)} ({data.cheap_model} -> {data.strong_model} -> people){_repeats(h)}",
        f"objective: human, accuracy against people >= {result.target} with at most "
        f"{result.budget:.1%} of traffic to people; lower bounds (betting, undecided ones "
        f"counted wrong) at level {1 - result.delta / len(result.strong_grid):.4g} each "
        f"({len(result.strong_grid)} strong thresholds, Bonferroni)",
        "",
        "  strong t_s  lowest t_c passed  accuracy  lower bound  to people  escalated  cost/1k USD",
    ]
    chosen = result.chosen
    for j, ts in enumerate(result.strong_grid):
        passed = np.flatnonzero(result.passed[:, j])
        label = "all" if ts > 1 else f"{ts:.2f}"
        if len(passed) == 0:
            lines.append(f"  {label:>10}  none")
            continue
        i = int(passed[0])
        tc = result.cheap_grid[i]
        mark = " <- chosen" if chosen == (i, j) else ""
        if chosen is not None and chosen[1] == j and chosen[0] != i:
            mark = f" (chosen t_c={result.cheap_grid[chosen[0]]:.2f} within the budget)"
        lines.append(
            f"  {label:>10}  {'all' if tc > 1 else f'{tc:.2f}':>17}  "
            f"{result.accuracy[i, j]:>8.4f}  {result.accuracy_lower[i, j]:>11.4f}  "
            f"{result.human[i, j]:>9.3f}  {result.escalation[i]:>9.3f}  "
            f"{result.cost_per_1k[i, j]:>11.5f}{mark}"
        )
    if chosen is not None:
        i, j = chosen
        lines += [
            "",
            f"  chosen: t_c={result.cheap_threshold:.2f}, t_s={result.strong_threshold:.2f}: "
            f"accuracy {result.accuracy[i, j]:.4f} (lower bound {result.accuracy_lower[i, j]:.4f})"
            f", {result.human[i, j]:.1%} to people, {result.escalation[i]:.1%} escalated",
            f"  {human_guarantee(result, h)}",
        ]
    return "\n".join(lines)


def assumptions(h: HumanSample | None, undecided: int) -> list[str]:
    """What the human guarantee assumes, in the words the file and the CLI print."""
    out = [
        "requests independent and identically distributed over the window, every threshold "
        "version alike (traffic like the window's)",
        "people's labels are the truth (disagreement between reviewers is not modelled)",
        "adjudication sampled every request with a strong answer at the recorded rates, "
        "independently of its label",
    ]
    if h is not None and not h.draws_recorded:
        out.append("every sampled adjudication was decided (the log records no draws)")
    else:
        out.append(
            f"{undecided} sampled adjudication(s) without a decision counted as wrong; a "
            "decision's timing does not depend on the labels of later requests"
        )
    return out


def human_guarantee(result: HumanCalibration, h: HumanSample | None = None) -> str:
    """The sentence a certified human calibration promises (stored in the threshold file)."""
    if result.status != "certified":
        return "none: refused"
    return (
        f"with probability at least {1 - result.delta:.6g} over the measurement window, the "
        f"accuracy against people of routed answers at the chosen cheap and strong thresholds "
        f"(a request sent to people counted as right), on traffic like the window's, is at "
        f"least {result.target}; assuming " + "; ".join(assumptions(h, result.pending))
    )


def human_refusal(result: HumanCalibration, need: sizing.HumanNeed) -> str:
    """One line: why the target cannot be certified, and how much more adjudication would."""
    head = (
        f"calibrate: cannot certify accuracy against people >= {result.target} at delta "
        f"{result.delta:.3g} within a human budget of {result.budget:.1%}: {result.reason}"
    )
    if result.pending:
        head += (
            f" ({result.pending} undecided adjudication(s) counted as wrong; deciding them "
            "first would help)"
        )
    tail = REFUSAL_TAIL
    if need.beyond is not None:
        return f"{head}; needs a fresh window more than {need.beyond:,.0f} times this one's{tail}"
    if need.requests is None:
        return f"{head}; {need.why}{tail}"
    assert need.goal is not None
    i, j = need.goal
    return (
        f"{head}; needs a fresh window of about {need.requests:,} requests with "
        f"{need.adjudicated:,} adjudicated answers (about {need.factor:.1f} times this one's, "
        f"at the same adjudication rates; {sizing.duration(need.hours)}) to certify "
        f"t_c={result.cheap_grid[i]:.2f}, t_s={result.strong_grid[j]:.2f}{tail}"
    )


def pending_refusal(h: HumanSample) -> str:
    """One line for ``--undecided refuse``: how many sampled adjudications are undecided, and
    when to try again. Written before any person's label is read: nothing is spent."""
    from datetime import UTC, datetime

    b = h.backlog
    assert b is not None

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    when = b.retry_after_ms()
    if when is not None:
        again = (
            f"at the recent pace ({b.per_hour:,.1f} decisions/h) they should be decided by "
            f"about {iso(when)}; try again then"
        )
    else:
        again = "no recent adjudication decisions to measure the pace by: is anyone reviewing?"
    oldest = (
        "" if b.oldest_pending_ms is None else f", the oldest sampled at {iso(b.oldest_pending_ms)}"
    )
    return (
        f"calibrate: {b.pending} of the window's {b.sampled} sampled adjudications have no "
        f"decision yet{oldest}; {again} (nothing was read from people's labels and no attempt "
        "was spent; --undecided wrong certifies now, counting them as wrong)"
    )


def adjudication_plan(ap: AdjudicationPlan, result: HumanCalibration) -> str:
    """The plan as the CLI prints it."""
    head = (
        f"Adjudication plan from a pilot of {ap.pilot_requests:,} requests ({ap.decided} "
        f"decided adjudications), target accuracy {result.target} within {result.budget:.1%} "
        "of traffic to people"
    )
    if ap.pair is None:
        return (
            f"{head}\n  no pair's estimated accuracy reaches the target within the budget on "
            "this pilot: nothing to plan for"
        )
    i, j = ap.pair
    lines = [
        head,
        f"  at t_c={result.cheap_grid[i]:.2f}, t_s={result.strong_grid[j]:.2f} (the pair a "
        "fresh window certifies soonest): a routed answer is wrong for "
        f"{ap.error['agree']:.1%} of agreeing and {ap.error['differ']:.1%} of differing "
        "answers",
        f"  people's time: {ap.per_1k:.1f} adjudications per 1,000 requests, kept as is",
        "",
        "                   ADJUDICATE_AGREE  ADJUDICATE_DISAGREE  E[X^2]   fresh window needed",
    ]
    rates = {"now": ap.now, "neyman": ap.suggested, "best": ap.best}
    for name, label in (("now", "now"), ("neyman", "Neyman"), ("best", "fewest requests")):
        q = rates[name]
        need = ap.requests[name]
        size = (
            "cannot be sized" if not math.isfinite(need) else f"about {math.ceil(need):,} requests"
        )
        moment = ap.second_moment[name]
        lines.append(
            f"  {label:<15}  {q['agree']:>16.3f}  {q['differ']:>19.3f}  {moment:>6.3f}   {size}"
        )
    lines.append(
        "  (Neyman: each class sampled in proportion to the square root of its error rate, the "
        "least variance; fewest requests: the split the bound needs least data with, its bets "
        "being capped by the largest 1/pi. Set ESCALATOR_ADJUDICATE_AGREE / _DISAGREE, then "
        "measure a fresh window)"
    )
    return "\n".join(lines)
