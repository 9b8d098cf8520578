"""Measure-first commands: ``export``, ``calibrate`` and ``report`` over the decisions log."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from escalator import decisions_log
from escalator.config import load_settings
from escalator.errors import EscalatorError


def _records(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    settings = load_settings(os.environ, require_kafka=args.input is None)
    since = decisions_log.parse_time(args.since, "--since")
    until = decisions_log.parse_time(args.until, "--until")
    kafka = settings.kafka if args.input is None else None
    records = decisions_log.load(kafka, settings.topics.decisions, args.input, since, until)
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    from escalator import calibrate as cal
    from escalator.prices import load_prices
    from escalator.thresholds import write_threshold_file

    records, source = _records(args)
    settings = load_settings(os.environ, require_kafka=False)
    prices = load_prices(settings.routing.prices_file)
    target = args.target
    if target is None:
        if args.objective != "quality":
            raise EscalatorError(f"--objective {args.objective} needs --target")
        target = 0.98
    grid = cal.grid_arg(args.grid) if args.grid else None
    data = cal.pair_decisions(records)
    result = cal.calibrate(
        data,
        objective=args.objective,
        target=target,
        grid=grid,
        bootstrap=args.bootstrap,
        seed=args.seed,
        per_label=args.per_label,
    )
    c, i = result.curve, result.chosen
    base = cal.baselines(data, float(c.escalation[i]))
    print(_table(data, result, base, source))
    body = {
        "created_from": source,
        "objective": {"name": args.objective, "target": target},
        "threshold": result.threshold,
        "label_thresholds": result.label_thresholds,
        "models": {"cheap": data.cheap_model, "strong": data.strong_model},
        "price_table_version": prices.version,
        "dataset": {
            "sha256": data.fingerprint(),
            "requests": data.n,
            "strong_answers": int(data.observed.sum()),
            "gold_labels": int((data.gold >= 0).sum()),
            "threshold_versions_seen": list(data.threshold_versions),
        },
        "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "interval": 0.95},
        "estimates": _point(c, i),
        "baselines": {
            "cheap_only": base.cheap_only,
            "strong_only": base.strong_only,
            "random_same_rate": base.random_same_rate,
            "oracle": base.oracle,
        },
    }
    version = write_threshold_file(Path(args.output), body)
    print(
        f"\nthreshold file: {args.output} (version {version}); "
        f"use it with ESCALATOR_THRESHOLDS_FILE={args.output}"
    )
    if args.plot:
        print(_plot(Path(args.plot), result, base))
    return 0


def _point(c: Any, i: int) -> dict[str, Any]:
    def triple(point: Any, ci: Any) -> list[float] | None:
        if point is None or ci is None:
            return None
        return [float(ci[0][i]), float(point[i]), float(ci[1][i])]

    return {
        "escalation_rate": triple(c.escalation, c.escalation_ci),
        "agreement_with_strong": triple(c.agreement, c.agreement_ci),
        "accuracy_vs_gold": triple(c.accuracy, c.accuracy_ci),
        "cost_per_1k_usd": triple(c.cost_per_1k, c.cost_ci),
    }


def _table(data: Any, result: Any, base: Any, source: str) -> str:
    c = result.curve
    gold = c.accuracy is not None
    lines = [
        f"Calibration from {source}: {data.n} requests, {int(data.observed.sum())} with a strong "
        f"answer, {int((data.gold >= 0).sum())} with a gold label "
        f"({data.cheap_model} -> {data.strong_model})",
        f"objective: {result.objective}, target {result.target}; 95% bootstrap intervals",
        "",
        "  threshold  escalated            agreement                "
        + ("accuracy                 " if gold else "")
        + "cost/1k USD",
    ]
    step = max(1, len(c.thresholds) // 25)
    show = sorted({*range(0, len(c.thresholds), step), len(c.thresholds) - 1, result.chosen})
    for i in show:
        mark = " <- chosen" if i == result.chosen else ""
        t = c.thresholds[i]
        label = "all" if t > 1 else f"{t:.2f}"
        row = (
            f"  {label:>9}  {_ci(c.escalation, c.escalation_ci, i)}  "
            f"{_ci(c.agreement, c.agreement_ci, i, 4)}  "
        )
        if gold:
            row += f"{_ci(c.accuracy, c.accuracy_ci, i, 4)}  "
        row += f"{c.cost_per_1k[i]:.5f} [{c.cost_ci[0][i]:.5f}, {c.cost_ci[1][i]:.5f}]{mark}"
        lines.append(row)
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
    if result.label_thresholds:
        lines.append(f"\n  per-label thresholds: {result.label_thresholds}")
    return "\n".join(lines)


def _ci(point: Any, ci: Any, i: int, digits: int = 3) -> str:
    return f"{point[i]:.{digits}f} [{ci[0][i]:.{digits}f}, {ci[1][i]:.{digits}f}]"


def _plot(path: Path, result: Any, base: Any) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: install the optional extra (pip install 'escalator[plot]')"
    c = result.curve
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.fill_between(
        c.cost_per_1k, c.agreement_ci[0], c.agreement_ci[1], alpha=0.2, label="95% interval"
    )
    ax.plot(c.cost_per_1k, c.agreement, "-", label="threshold grid")
    for name, b, marker in (
        ("cheap-only", base.cheap_only, "v"),
        ("strong-only", base.strong_only, "^"),
        ("random, same rate", base.random_same_rate, "x"),
        ("oracle", base.oracle, "*"),
    ):
        ax.plot(b["cost_per_1k"], b["agreement"], marker, markersize=9, label=name)
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


def cmd_report(args: argparse.Namespace) -> int:
    from escalator.prices import load_prices
    from escalator.report import build_report, render_text

    records, _ = _records(args)
    settings = load_settings(os.environ, require_kafka=False)
    report = build_report(records, load_prices(settings.routing.prices_file), args.monthly_volume)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(render_text(report))
    return 0


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        type=Path,
        default=None,
        help="decisions JSONL (default: read the decisions topic)",
    )
    p.add_argument("--since", default=None, help="ISO-8601 time or epoch ms (inclusive)")
    p.add_argument("--until", default=None, help="ISO-8601 time or epoch ms (exclusive)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser("export", help="write the decisions log as JSON lines")
    _source_args(export)
    export.add_argument("--output", default=None, help="file (default: stdout)")
    export.set_defaults(func=cmd_export)

    calibrate = sub.add_parser("calibrate", help="choose thresholds from the decisions log")
    _source_args(calibrate)
    calibrate.add_argument("--objective", choices=["quality", "rate", "budget"], default="quality")
    calibrate.add_argument(
        "--target",
        type=float,
        default=None,
        help="quality: agreement lower bound (default 0.98); rate: "
        "escalation rate; budget: USD per 1,000 requests",
    )
    calibrate.add_argument("--grid", default=None, help="START:STOP:STEP (default 0:1:0.01)")
    calibrate.add_argument("--per-label", action="store_true")
    calibrate.add_argument("--bootstrap", type=int, default=1000)
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--output", default="thresholds.json")
    calibrate.add_argument("--plot", default=None, help="PNG path (needs the plot extra)")
    calibrate.set_defaults(func=cmd_calibrate)

    report = sub.add_parser("report", help="spend, savings and escalation from the decisions log")
    _source_args(report)
    report.add_argument("--monthly-volume", type=int, default=None)
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_report)
