"""Measure-first commands: ``export``, ``calibrate`` and ``report`` over the decisions log.

The flags and the reading of the log live here; ``calibrate``'s workflow (ledger, delta
spending, refusal, the thresholds file) is calibration/workflow.py's."""

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


def _request(args: argparse.Namespace) -> Any:
    """The flags of ``calibrate`` as the workflow's ``Request``."""
    from dataclasses import fields

    from escalator.calibration.adjudications import DEFAULT_REVIEW_LABELS
    from escalator.calibration.workflow import Request

    given = args.review_label or list(DEFAULT_REVIEW_LABELS)
    labels = () if given == ["none"] else tuple(given)
    names = {f.name for f in fields(Request)} - {"review_labels"}
    return Request(review_labels=labels, **{name: getattr(args, name) for name in names})


def cmd_calibrate(args: argparse.Namespace) -> int:
    from escalator.calibration import workflow
    from escalator.model.prices import load_prices

    settings = settings_from_env(require_kafka=False)
    req = _request(args)
    workflow.check_target(req)
    prices = load_prices(settings.routing.prices_file)
    target = workflow.target_of(req)
    if req.plan and req.assume_accepted is not None:
        strong = settings.model.strong_model
        return workflow.plan_assumed(req, target, prices, strong, sys.stdout, sys.stderr)
    records, source = _records(args, late_decisions=True)
    return workflow.calibrate(req, target, records, source, prices, sys.stdout, sys.stderr)


def _grid(text: str) -> str:
    """An argparse type: a valid --grid (parsed again where used)."""
    from escalator.calibration.dataset import grid_arg

    try:
        grid_arg(text)
    except EscalatorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _strong_grid(text: str) -> str:
    """An argparse type: a valid --strong-grid (parsed again where used)."""
    from escalator.calibration.dataset import strong_grid_arg

    try:
        strong_grid_arg(text)
    except EscalatorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _tokens(text: str) -> str:
    """An argparse type: INPUT:OUTPUT token counts."""
    given, _, out = text.partition(":")
    if not given.isdigit() or not (out == "" or out.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not INPUT:OUTPUT token counts")
    return text


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
