"""Measure-first commands: ``export``, ``calibrate`` and ``report`` over the decisions log."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from escalator.calibration import decisions_log
from escalator.cli._common import (
    existing_file,
    fraction,
    integer,
    number,
    parse_time,
    settings_from_env,
    writable_path,
)
from escalator.contract.decisions import Decision
from escalator.errors import EscalatorError


def _records(
    args: argparse.Namespace, *, late_decisions: bool = False
) -> tuple[list[Decision], str]:
    """The window's records; with ``late_decisions``, also the human decisions made after
    ``--until`` for the window's own requests (calibrate: people decide after the window)."""
    settings = settings_from_env(require_kafka=args.input is None)
    since = parse_time(args.since, "--since")
    until = parse_time(args.until, "--until")
    kafka = settings.kafka if args.input is None else None
    if kafka is not None:  # an unreachable broker, named in one line before reading
        from escalator.kafka.clients import check_connection

        asyncio.run(check_connection(kafka))
    read_until = None if late_decisions else until
    records = decisions_log.load(kafka, settings.topics.decisions, args.input, since, read_until)
    if late_decisions:
        records = decisions_log.with_late_decisions(records, until)
    source = str(args.input) if args.input else f"topic {settings.topics.decisions}"
    return records, source


def cmd_export(args: argparse.Namespace) -> int:
    records, source = _records(args)
    out = sys.stdout.buffer
    if args.output:
        with Path(args.output).open("wb") as f:
            decisions_log.write_jsonl(records, f)
    else:
        decisions_log.write_jsonl(records, out)
        out.flush()
    print(f"exported {len(records)} decision(s) from {source}", file=sys.stderr)
    return 0


EXIT_REFUSED = 3  # calibrate: the data cannot certify the target (one line says why)


def _window(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    first, last = int(data.ts_ms.min()), int(data.ts_ms.max())
    return {
        "since": args.since,
        "until": args.until,
        "first_ts_ms": first,
        "last_ts_ms": last,
        "first_ts": _iso(first),
        "last_ts": _iso(last),
    }


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _ledger_path(args: argparse.Namespace) -> Path | None:
    if args.ledger == "none":
        return None
    if args.ledger:
        return Path(args.ledger)
    return Path(args.output).parent / "calibration-ledger.jsonl"


def _strong_call_usd(records: list[Decision], prices: Any) -> float | None:
    """Mean cost of one strong call in the window, re-priced from its tokens."""
    from escalator.calibration.report import usage_of

    costs = [
        prices.cost_usd(r.attempt.model, usage_of(r.attempt)) for r in records if r.tier == "strong"
    ]
    return sum(costs) / len(costs) if costs else None


def cmd_calibrate(args: argparse.Namespace) -> int:
    from escalator.calibration import certify as cal
    from escalator.calibration import plan
    from escalator.calibration import threshold_file as tfile
    from escalator.calibration.render import calibration_table, plan_table, plot, refusal

    settings = settings_from_env(require_kafka=False)
    _check_target(args)
    prices = _prices(settings)
    target = args.target
    if target is None:
        if args.objective not in ("quality", "human"):
            raise EscalatorError(f"--objective {args.objective} needs --target")
        target = 0.95 if args.objective == "human" else 0.98
    if args.plan and args.assume_accepted is not None:
        if args.objective == "human":
            raise EscalatorError(
                "--objective human --plan needs a pilot log (--input or the topic)"
            )
        return _plan_assumed(args, target, prices, settings)
    records, source = _records(args, late_decisions=True)
    grid = cal.grid_arg(args.grid) if args.grid else None
    data = cal.pair_decisions(records)
    ledger = _ledger_path(args) if args.objective in ("quality", "human") else None
    attempts = (
        []
        if ledger is None
        else tfile.ledger_attempts(ledger, data.cheap_model, data.strong_model, args.objective)
    )
    attempt = len(attempts) + 1
    delta = args.delta if ledger is None else tfile.spent(args.delta, attempt)
    if args.plan and args.objective == "human":
        return _plan_human(args, records, data, target, tfile.spent(args.delta, attempt))
    if args.plan:
        result = cal.calibrate(data, target=target, delta=delta, margin=args.margin, grid=grid)
        call = args.strong_call_usd or _strong_call_usd(records, prices)
        table = plan_table(
            data,
            result,
            call_usd=call,
            delta=tfile.spent(args.delta, attempt),
            power=args.power,
            assume_threshold=args.assume_threshold,
            traffic_per_hour=args.traffic_per_hour,
        )
        print(table)
        return 0
    window = _window(args, data)
    if ledger is not None:
        seen = tfile.overlapping(attempts, window["first_ts_ms"], window["last_ts_ms"])
        if seen is not None:
            w = seen["window"]
            print(
                f"calibrate: this window ({window['first_ts']} .. {window['last_ts']}) overlaps "
                f"attempt {seen.get('attempt')} ({w.get('first_ts')} .. {w.get('last_ts')}, "
                f"{seen.get('status')}) in {ledger}: a window certifies once; measure on and "
                f"use --since after {w.get('last_ts')} (to explore without spending the "
                "ledger's error budget: --ledger none --output elsewhere.json, which certifies "
                "nothing you should deploy)",
                file=sys.stderr,
            )
            return EXIT_REFUSED
    if args.objective == "human":
        return _calibrate_human(args, records, data, source, window, ledger, attempt, prices)
    result = cal.calibrate(
        data,
        objective=args.objective,
        target=target,
        delta=delta,
        margin=args.margin,
        grid=grid,
        per_label=args.per_label,
    )
    base = cal.baselines(data, float(result.curve.escalation[result.chosen]))
    print(calibration_table(data, result, base, source))
    _print_people(args, records, data, result.curve.thresholds, result.curve.delta)
    if ledger is not None:
        tfile.append_attempt(
            ledger,
            {
                "attempt": attempt,
                "models": {"cheap": data.cheap_model, "strong": data.strong_model},
                "window": window,
                "status": result.status,
                "target": target,
                "delta_spent": delta,
                "threshold": None if result.status == "refused" else result.threshold,
                "dataset_sha256": data.fingerprint(),
            },
        )
    if result.status == "refused":
        need = plan.needed(data, result, tfile.spent(args.delta, attempt + 1), args.power)
        print(refusal(result, need), file=sys.stderr)
        if args.fallback != "escalate-all":
            return EXIT_REFUSED
    body = tfile.threshold_body(
        result,
        data,
        source=source,
        delta=args.delta,
        window=window,
        price_table_version=prices.version,
        base=base,
        ledger=ledger,
        attempt=attempt,
        fallback=args.fallback == "escalate-all",
    )
    version = tfile.write_threshold_file(Path(args.output), body)
    print(
        f"\nthreshold file: {args.output} (version {version}); "
        f"use it with ESCALATOR_THRESHOLDS_FILE={args.output}"
    )
    if args.plot:
        print(plot(Path(args.plot), result, base))
    return 0


def _check_target(args: argparse.Namespace) -> None:
    """--target's range depends on the objective: checked before any data is read."""
    target = args.target
    if target is None:
        return
    if args.objective in ("quality", "human") and not 0 < target <= 1:
        raise EscalatorError(f"--target {target}: agreement or accuracy must be in (0, 1]")
    if args.objective == "rate" and not 0 <= target <= 1:
        raise EscalatorError(f"--target {target}: an escalation rate must be in [0, 1]")
    if args.objective == "budget" and not target > 0:
        raise EscalatorError(f"--target {target}: a budget in USD per 1,000 must be above 0")


def _grid(text: str) -> str:
    """An argparse type: a valid --grid (parsed again where used)."""
    from escalator.calibration import certify as cal

    try:
        cal.grid_arg(text)
    except EscalatorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _strong_grid(text: str) -> str:
    """An argparse type: a valid --strong-grid (parsed again where used)."""
    from escalator.calibration import human_certify

    try:
        human_certify.strong_grid_arg(text)
    except EscalatorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _tokens(text: str) -> str:
    """An argparse type: INPUT:OUTPUT token counts."""
    given, _, out = text.partition(":")
    if not given.isdigit() or not (out == "" or out.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not INPUT:OUTPUT token counts")
    return text


def _review_labels(args: argparse.Namespace) -> list[str]:
    from escalator.calibration.adjudications import DEFAULT_REVIEW_LABELS

    given = args.review_label or list(DEFAULT_REVIEW_LABELS)
    return [] if given == ["none"] else given


def _print_people(
    args: argparse.Namespace, records: list[Decision], data: Any, t: Any, delta: float
) -> None:
    """The against-people table, when the window has adjudicated human decisions (only then:
    the output without human decisions is what it always was)."""
    from escalator.calibration import adjudications, human
    from escalator.calibration.render import people_table

    h = adjudications.human_sample(records, data, _review_labels(args))
    if h is not None and h.m > 0:
        print(people_table(h, human.people_curve(h, t, delta)))


def _calibrate_human(
    args: argparse.Namespace,
    records: list[Decision],
    data: Any,
    source: str,
    window: dict[str, Any],
    ledger: Path | None,
    attempt: int,
    prices: Any,
) -> int:
    from escalator.calibration import adjudications as adj
    from escalator.calibration import certify as cal
    from escalator.calibration import human_certify as hc
    from escalator.calibration import threshold_file as tfile
    from escalator.calibration.render import human_table

    labels = _review_labels(args)
    h = adj.human_sample(records, data, labels)
    if h is None:
        raise EscalatorError(
            "--objective human needs human decisions in the decisions log (adjudications: "
            "ESCALATOR_ADJUDICATE_DISAGREE / _AGREE > 0)"
        )
    if not h.draws_recorded:
        raise EscalatorError(
            "the window's strong decisions record no adjudication draw, so undecided "
            "adjudications cannot be told apart from unsampled requests: calibrate on a window "
            "measured since the strong tier records them (--since)"
        )
    if h.pending.any() and args.undecided == "refuse":
        # Before any person's label is read: nothing is spent, the window stays usable.
        print(hc.pending_refusal(h), file=sys.stderr)
        return EXIT_REFUSED
    delta = args.delta if ledger is None else tfile.spent(args.delta, attempt)
    strong_conf, strong_review = adj.strong_confidences(records, data, labels)
    result = hc.calibrate_human(
        data,
        h,
        strong_conf,
        strong_review,
        target=args.target if args.target is not None else 0.95,
        budget=args.human_budget,
        delta=delta,
        review_cost=args.review_cost or 0.0,
        grid=cal.grid_arg(args.grid) if args.grid else None,
        strong_grid=hc.strong_grid_arg(args.strong_grid) if args.strong_grid else None,
    )
    print(human_table(data, h, result, source))
    if ledger is not None:
        tfile.append_attempt(
            ledger,
            {
                "attempt": attempt,
                "objective": "human",
                "models": {"cheap": data.cheap_model, "strong": data.strong_model},
                "window": window,
                "status": result.status,
                "target": result.target,
                "human_budget": result.budget,
                "delta_spent": delta,
                "undecided": result.pending,
                "threshold": None if result.chosen is None else result.cheap_threshold,
                "strong_threshold": None if result.chosen is None else result.strong_threshold,
                "dataset_sha256": data.fingerprint(),
            },
        )
    fallback = args.fallback == "escalate-all"
    if result.status == "refused":
        need = hc.needed(data, h, result, tfile.spent(args.delta, attempt + 1), args.power)
        print(hc.refusal(result, need), file=sys.stderr)
        if not fallback:
            return EXIT_REFUSED
    body = tfile.human_threshold_body(
        result,
        data,
        h,
        source=source,
        delta=args.delta,
        window=window,
        price_table_version=prices.version,
        ledger=ledger,
        attempt=attempt,
        review_labels=labels,
    )
    version = tfile.write_threshold_file(Path(args.output), body)
    print(
        f"\nthreshold file: {args.output} (version {version}); "
        f"use it with ESCALATOR_THRESHOLDS_FILE={args.output}"
    )
    return 0


def _plan_human(
    args: argparse.Namespace,
    records: list[Decision],
    data: Any,
    target: float,
    delta_next: float,
) -> int:
    from escalator.calibration import adjudications as adj
    from escalator.calibration import certify as cal
    from escalator.calibration import human_certify as hc
    from escalator.calibration.human_plan import plan_adjudication, render_plan

    labels = _review_labels(args)
    h = adj.human_sample(records, data, labels)
    if h is None or h.decided == 0:
        raise EscalatorError(
            "--objective human --plan needs a pilot with adjudicated human decisions "
            "(ESCALATOR_ADJUDICATE_DISAGREE / _AGREE > 0)"
        )
    strong_conf, strong_review = adj.strong_confidences(records, data, labels)
    result = hc.calibrate_human(
        data,
        h,
        strong_conf,
        strong_review,
        target=target,
        budget=args.human_budget,
        delta=delta_next,
        grid=cal.grid_arg(args.grid) if args.grid else None,
        strong_grid=hc.strong_grid_arg(args.strong_grid) if args.strong_grid else None,
    )
    plan = plan_adjudication(data, h, result, delta_next, args.power)
    print(render_plan(plan, result))
    return 0


def _prices(settings: Any) -> Any:
    from escalator.model.prices import load_prices

    return load_prices(settings.routing.prices_file)


def _plan_assumed(args: argparse.Namespace, target: float, prices: Any, settings: Any) -> int:
    from escalator.calibration import plan
    from escalator.calibration.render import plan_rows
    from escalator.model.prices import Usage

    if args.assume_disagreement is None:
        raise EscalatorError("--assume-accepted needs --assume-disagreement")
    prof = plan.assumed(args.assume_accepted, args.assume_disagreement)
    call = args.strong_call_usd
    if call is None:
        tokens_in, _, tokens_out = args.assume_strong_tokens.partition(":")
        call = prices.cost_usd(
            settings.model.strong_model,
            Usage(input_tokens=int(tokens_in), output_tokens=int(tokens_out or 0)),
        )
    if 1 - prof.disagree[0] < target:
        print(
            f"calibrate --plan: agreement {1 - prof.disagree[0]:.4f} at that threshold is below "
            f"the target {target}: no measurement can certify it",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    print(
        f"Plan from assumptions: {args.assume_accepted:.0%} of traffic accepted, "
        f"{args.assume_disagreement:.2%} of those disagree with the strong model; target "
        f"{target}, delta {args.delta:g}, power {args.power:.0%}; strong call ${call:.6f}"
    )
    lines = plan_rows(
        prof,
        prof,
        0.0,
        target,
        args.delta,
        args.traffic_per_hour,
        call,
        0,
        args.power,
    )
    print("\n".join(lines))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from escalator.calibration.report import build_report, render_text
    from escalator.model.prices import load_prices

    records, _ = _records(args)
    settings = settings_from_env(require_kafka=False)
    if args.review_cost is not None and args.review_cost < 0:
        raise EscalatorError(f"--review-cost {args.review_cost}: must be >= 0")
    report = build_report(
        records,
        load_prices(settings.routing.prices_file),
        args.monthly_volume,
        review_cost=args.review_cost,
        spend_cap_usd=settings.model.monthly_spend_cap_usd,
    )
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(render_text(report))
    return 0


class _Defaults(argparse.HelpFormatter):
    """Append "(default: X)" to each option whose help does not already name its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        type=existing_file,
        default=None,
        help="decisions JSONL (default: read the decisions topic)",
    )
    p.add_argument("--since", default=None, help="ISO-8601 time or epoch ms (inclusive)")
    p.add_argument("--until", default=None, help="ISO-8601 time or epoch ms (exclusive)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser("export", help="write the decisions log as JSON lines")
    _source_args(export)
    export.add_argument("--output", type=writable_path, default=None, help="file (default: stdout)")
    export.set_defaults(func=cmd_export)

    calibrate = sub.add_parser(
        "calibrate",
        help="choose thresholds from the decisions log (certified, or refuses)",
        description="Choose the cheapest threshold whose agreement with the strong model is "
        "certified to reach --target with probability at least 1 - delta (see "
        "docs/CALIBRATION.md). Exit 0: certified, file written; exit 3: the data cannot "
        "certify it (one line on stderr says how much more measurement would), no file "
        "written unless --fallback escalate-all.",
        formatter_class=_Defaults,
    )
    _source_args(calibrate)
    calibrate.add_argument(
        "--objective",
        choices=["quality", "rate", "budget", "human"],
        default="quality",
        help="quality: certified agreement >= --target; rate: the highest threshold whose "
        "escalation rate is <= --target; budget: the best estimated agreement whose cost per "
        "1,000 requests is <= --target USD (rate and budget carry no guarantee); human: the "
        "cheapest cheap and strong thresholds whose accuracy against people (adjudicated "
        "human decisions) is certified >= --target (default 0.95) with at most "
        "--human-budget of traffic sent to people",
    )
    calibrate.add_argument(
        "--target",
        type=number(),
        default=None,
        help="quality: agreement to certify (default 0.98); rate: escalation rate; "
        "budget: USD per 1,000 requests (required for rate and budget)",
    )
    calibrate.add_argument(
        "--delta",
        type=number(0.0, 1.0, lo_open=True, hi_open=True),
        default=0.05,
        help="error budget: the guarantee holds with probability >= 1 - delta; with a "
        "ledger, attempt k spends delta * 6 / (pi^2 k^2) of it",
    )
    calibrate.add_argument(
        "--margin",
        type=fraction,
        default=0.10,
        help="refuse when the lowest certifiable threshold escalates more than this above the "
        "best threshold by point estimate (1 accepts any certified threshold)",
    )
    calibrate.add_argument(
        "--grid",
        type=_grid,
        default=None,
        help="START:STOP:STEP thresholds (default 0:1:0.01), tested "
        "from the top down after escalate-all",
    )
    calibrate.add_argument(
        "--per-label",
        action="store_true",
        help="a certified threshold per cheap label (delta split over the labels); a label "
        "that cannot be certified escalates everything",
    )
    calibrate.add_argument(
        "--output",
        type=writable_path,
        default="thresholds.json",
        help="the thresholds file to write (written only when certified, or with --fallback)",
    )
    calibrate.add_argument(
        "--ledger",
        default=None,
        help="attempts ledger (JSON lines; default: calibration-ledger.jsonl beside --output): "
        "each attempt's window must not overlap an earlier one's; 'none': no ledger, a single "
        "attempt at the full delta",
    )
    calibrate.add_argument(
        "--fallback",
        choices=["none", "escalate-all"],
        default="none",
        help="on refusal: 'escalate-all' still writes a thresholds file that escalates "
        "every request",
    )
    calibrate.add_argument(
        "--plan",
        action="store_true",
        help="print the measurement plan (requests, shadowed answers, duration, shadow cost "
        "per shadow rate; with --objective human, the adjudication rates that minimise the "
        "bound's variance for the same people's time) instead of calibrating; writes nothing",
    )
    calibrate.add_argument(
        "--power",
        type=number(0.0, 1.0, lo_open=True, hi_open=True),
        default=0.8,
        help="plans (and the refusal's estimate) size the window to pass with about this "
        "probability",
    )
    calibrate.add_argument(
        "--traffic-per-hour",
        type=number(0.0, lo_open=True),
        default=None,
        help="plan: requests per hour (default: the window's observed rate)",
    )
    calibrate.add_argument(
        "--assume-threshold",
        type=number(0.0, 1.01),
        default=None,
        help="plan: threshold in force while measuring (default: the window's)",
    )
    calibrate.add_argument(
        "--assume-accepted",
        type=number(0.0, 1.0, lo_open=True),
        default=None,
        help="plan without a log: share of traffic accepted at the threshold to certify",
    )
    calibrate.add_argument(
        "--assume-disagreement",
        type=fraction,
        default=None,
        help="plan without a log: share of those accepted answers that the strong model "
        "would answer differently",
    )
    calibrate.add_argument(
        "--strong-call-usd",
        type=number(0.0),
        default=None,
        help="plan: cost of one shadow call (default: the window's strong calls re-priced "
        "with the price table)",
    )
    calibrate.add_argument(
        "--assume-strong-tokens",
        type=_tokens,
        default="1500:20",
        help="plan without a log: INPUT:OUTPUT tokens of one strong call, priced with the "
        "price table",
    )
    calibrate.add_argument(
        "--human-budget",
        type=fraction,
        default=0.05,
        help="objective human: the largest share of traffic (0..1) that may be sent to people "
        "by the routing (estimated; adjudication samples are extra)",
    )
    calibrate.add_argument(
        "--review-cost",
        type=number(0.0),
        default=None,
        help="objective human: USD per item decided by a person, added to the cost that "
        "orders the pairs (default: 0, people ranked by share only)",
    )
    calibrate.add_argument(
        "--strong-grid",
        type=_strong_grid,
        default=None,
        help="objective human: comma-separated strong thresholds to try (default "
        "0,0.5,0.6,0.7,0.8,0.9,0.95,0.99,1.01; each costs delta / K)",
    )
    calibrate.add_argument(
        "--review-label",
        action="append",
        default=None,
        help="a label the strong answer cannot settle (sent to people); repeat for more; "
        "'none' for no such label (default: review-needed, when the log has it)",
    )
    calibrate.add_argument(
        "--undecided",
        choices=["refuse", "wrong"],
        default="refuse",
        help="objective human: what to do with adjudications sampled but not decided yet. "
        "refuse: exit 3 saying how many and when to try again, before reading any person's "
        "label (no attempt spent); wrong: count each as wrong (always valid, often a refusal)",
    )
    calibrate.add_argument(
        "--plot", type=writable_path, default=None, help="PNG path (needs the plot extra)"
    )
    calibrate.set_defaults(func=cmd_calibrate)

    report = sub.add_parser("report", help="spend, savings and escalation from the decisions log")
    _source_args(report)
    report.add_argument(
        "--monthly-volume",
        type=integer(1),
        default=None,
        help="requests per month: adds a monthly projection of spend and savings",
    )
    report.add_argument(
        "--review-cost",
        type=number(0.0),
        default=None,
        help="USD per human decision: prices the human tier's items (default: counted only)",
    )
    report.add_argument(
        "--json", action="store_true", help="the report as one JSON object (for tools)"
    )
    report.set_defaults(func=cmd_report)
