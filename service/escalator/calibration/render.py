"""What a calibration looks like to a person: the table ``escalator calibrate`` prints, the
guarantee sentence, the refusal line, the measurement plan and the cost-against-agreement plot.

``escalator calibrate`` (cli/measure.py) and ``escalator demo`` (escalator_dev/demo.py) both
print these; neither owns them. Nothing here computes a bound or chooses a threshold
(``certify`` and ``plan`` do); this module only turns their results into text or a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import numpy as np

from escalator.calibration import estimates, plan
from escalator.calibration.adjudications import HumanSample
from escalator.calibration.certify import Baselines, Calibration, Dataset
from escalator.calibration.human import PeopleCurve
from escalator.calibration.human_certify import HumanCalibration
from escalator.calibration.human_certify import guarantee as human_guarantee


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


def refusal(result: Calibration, need: plan.Need) -> str:
    """One line: why the target cannot be certified, and how much more measurement would."""
    head = (
        f"calibrate: cannot certify agreement >= {result.target} at delta {result.delta:.3g}: "
        f"{result.reason}"
    )
    tail = "; wrote no thresholds file (--fallback escalate-all writes one that escalates "
    tail += "everything)"
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
            why = f"needs a fresh window of more than {plan.MAX_REQUESTS:,} requests"
        return f"{head}; {why}{tail}"
    rate = "" if need.per_hour is None else f" at {need.per_hour:,.0f} requests/h"
    return (
        f"{head}; needs a fresh window of about {need.requests:,} requests with "
        f"{need.shadowed:,} shadowed answers (shadow rate {need.p:g}, threshold {need.tau:g}; "
        f"{plan.duration(need.hours)}{rate}) to certify t={need.goal_threshold:.2f} "
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
    prof, cautious = plan.pilot(data, t, estimates.counts(data.sample(), t))
    tau, _, per_hour = plan.design_in_force(data)
    tau = assume_threshold if assume_threshold is not None else tau
    per_hour = traffic_per_hour or per_hour
    goal = plan.goal_index(prof, result.target, result.margin)
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
    best = plan.goal_index(prof, result.target, 0.0)
    esc = prof.escalation()
    lines.append(
        f"  best achievable by estimate: t={t[best]:.2f}, escalating {esc[best]:.1%}; "
        f"goal: certify t={t[goal]:.2f} (escalating {esc[goal]:.1%}) or lower"
    )
    lines += plan_rows(cautious, prof, tau, result.target, delta, per_hour, call_usd, goal, power)
    return "\n".join(lines)


def plan_rows(
    cautious: plan.Profile,
    prof: plan.Profile,
    tau: float,
    target: float,
    delta: float,
    per_hour: float | None,
    call_usd: float | None,
    goal: int,
    power: float,
) -> list[str]:
    """The plan's table, one row per shadow rate (``cautious`` sizes it; ``prof`` is the
    fallback when the cautious profile cannot reach the goal at all)."""
    lines = ["", "  shadow rate    requests   shadowed    duration    shadow cost USD"]
    accepted = float(prof.at(np.asarray([tau]))[0][0])
    for p in plan.SHADOW_RATES:
        n = plan.required_requests(cautious, plan.Design(tau, p), target, delta, goal, power)
        if n is None:
            n = plan.required_requests(prof, plan.Design(tau, p), target, delta, goal, power)
        if n is None:
            lines.append(f"  {p:>11g}    more than {plan.MAX_REQUESTS:,} requests")
            continue
        shadowed = math.ceil(n * accepted * p)
        hours = None if not per_hour else n / per_hour
        cost = "n/a" if call_usd is None else f"{shadowed * call_usd:,.4f}"
        lines.append(
            f"  {p:>11g}  {n:>10,}  {shadowed:>9,}  {plan.duration(hours):>10}  {cost:>17}"
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
