"""``escalator tier0 pairs|train|certify|inspect``: a local classifier trained on the service's
own answers, and the certificate that lets it answer (service/escalator/tier0/).

``pairs`` joins the requests topic with the results topic (read without a consumer group)
into a pairs file (JSON lines: tier0/pairs.py); training and certification read such a file
(``--input``). Errors are one line and exit 2; a certification the data cannot
support is refused with exit 3 (as ``calibrate``), with how many pairs a fresh window needs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from escalator.cli._common import existing_file, fraction, number, parse_time, writable_path
from escalator.errors import EscalatorError

EXIT_REFUSED = 3  # certify: the window cannot certify the target, or is not a fresh one


def _time(text: str) -> int:
    """An argparse type: ISO-8601 or epoch milliseconds (named by argparse when bad)."""
    try:
        return int(parse_time(text, "time") or 0)
    except EscalatorError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ISO-8601 or epoch milliseconds"
        ) from None


def _task() -> Any:
    from escalator.cli._common import settings_from_env
    from escalator.model.task import load_task

    settings = settings_from_env(require_kafka=False)
    return load_task(settings.routing.task_file)


def _window(args: argparse.Namespace) -> Any:
    from escalator.tier0 import pairs

    return pairs.window(pairs.read_jsonl(args.input), args.since, args.until)


def cmd_pairs(args: argparse.Namespace) -> int:
    from escalator.cli._common import run_with_kafka, settings_from_env
    from escalator.tier0 import pairs, source

    settings = settings_from_env()
    topics = settings.topics
    found = run_with_kafka(
        settings.kafka,
        lambda: source.read_pairs(
            settings.kafka, topics.requests, topics.results, args.since, args.until
        ),
    )
    with args.output.open("wb") as f:
        n = pairs.write_jsonl(found, f)
    print(
        f"wrote {n} pair(s) from {topics.requests} joined with {topics.results} to "
        f"{args.output} (it holds request text: keep it as you keep the requests topic)",
        file=sys.stderr,
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from escalator.tier0 import artefact, train
    from escalator.tier0.model import Features

    task = _task()
    w = _window(args)
    unknown = sorted(set(w.labels()) - set(task.labels))
    if unknown:
        raise EscalatorError(
            f"the pairs carry labels the task does not have: {', '.join(unknown)} "
            "(ESCALATOR_TASK_FILE names the task the service runs)"
        )
    models = w.models()
    started = time.perf_counter()
    model = train.fit(w.texts(), w.labels(), features=Features(bits=args.bits), alpha=args.alpha)
    took = time.perf_counter() - started
    from sklearn import __version__ as sklearn_version

    body: dict[str, Any] = {
        "status": "trained",
        "task": {"name": task.name, "fingerprint": task.fingerprint, "labels": list(task.labels)},
        "models": models,
        "classes": list(model.classes),
        "features": model.features.as_json(),
        "weights": artefact.write_weights(model, args.output),
        "training": {
            "source": str(args.input),
            "window": w.describe(),
            "fit": f"SGDClassifier(loss='log_loss', alpha={args.alpha}, max_iter={train.EPOCHS})",
            "scikit_learn": sklearn_version,
        },
        "threshold": None,
        "certification": None,
    }
    version = artefact.write_manifest(args.output, body)
    window = body["training"]["window"]
    print(
        f"trained tier 0 on {w.n} pairs ({window['first_ts']} .. {window['last_ts']}) of "
        f"{models['cheap']} -> {models['strong']} in {took:.1f} s: {args.output} (version "
        f"{version}); it answers nothing until certified on a later window: escalator tier0 "
        f"certify --artefact {args.output} --since {w.last_ms + 1} ..."
    )
    return 0


def _ledger(args: argparse.Namespace) -> Path | None:
    if args.ledger == "none":
        return None
    return Path(args.ledger) if args.ledger else args.artefact.parent / "tier0-ledger.jsonl"


def cmd_certify(args: argparse.Namespace) -> int:
    from escalator.calibration import threshold_file as tfile
    from escalator.tier0 import artefact
    from escalator.tier0 import certify as t0

    doc = artefact.read_manifest(args.artefact)
    model = artefact.read_model(args.artefact, doc)
    w = _window(args)
    models = w.models()
    if models != doc.get("models"):
        raise EscalatorError(
            f"the window's answers come from {models['cheap']} -> {models['strong']}, the "
            f"artefact learned from {doc['models']['cheap']} -> {doc['models']['strong']}"
        )
    trained = (doc.get("training") or {}).get("window") or {}
    window = w.describe()
    if not isinstance(trained.get("last_ts_ms"), int) or w.first_ms <= trained["last_ts_ms"]:
        print(
            f"tier0 certify: this window starts at {window['first_ts']}, not after the training "
            f"window's end ({trained.get('last_ts')}): certify on pairs training never saw "
            f"(--since after {trained.get('last_ts')})",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    ledger = _ledger(args)
    attempts = (
        []
        if ledger is None
        else tfile.ledger_attempts(ledger, models["cheap"], models["strong"], "tier0")
    )
    attempt = len(attempts) + 1
    delta = args.delta if ledger is None else tfile.spent(args.delta, attempt)
    if ledger is not None:
        seen = tfile.overlapping(attempts, w.first_ms, w.last_ms)
        if seen is not None:
            print(
                f"tier0 certify: this window ({window['first_ts']} .. {window['last_ts']}) "
                f"overlaps attempt {seen.get('attempt')} in {ledger}: a window certifies once; "
                f"use --since after {(seen.get('window') or {}).get('last_ts')}",
                file=sys.stderr,
            )
            return EXIT_REFUSED
    result, _, _ = t0.certify(model, w, target=args.target, delta=delta, margin=args.margin)
    i, b = result.chosen, result.best_index
    head = (
        f"tier 0 on {w.n} pairs ({window['first_ts']} .. {window['last_ts']}), target "
        f"{args.target:.2%}, delta {delta:.4g} (attempt {attempt}):"
    )
    best = (
        f"best by estimate t={result.thresholds[b]:.2f} answers {result.answered[b]:.1%} "
        f"(agreement {result.agreement[b]:.2%})"
    )
    if result.status == "certified":
        print(
            f"{head}\n  certified threshold {result.threshold:.2f}: answers "
            f"{result.answered[i]:.1%}, agreement {result.agreement[i]:.2%} (lower bound "
            f"{result.agreement_lower[i]:.2%}), its own answers agree "
            f"{result.answered_agreement[i]:.2%}; {best}"
        )
    else:
        print(f"{head}\n  no threshold certified; {best}")
    if ledger is not None:
        tfile.append_attempt(
            ledger,
            {
                "attempt": attempt,
                "objective": "tier0",
                "models": models,
                "window": window,
                "status": result.status,
                "target": args.target,
                "delta_spent": delta,
                "threshold": None if result.status == "refused" else result.threshold,
                "artefact": doc.get("version"),
                "dataset_sha256": window["sha256"],
            },
        )
    if result.status == "refused":
        need = t0.needed(result, tfile.spent(args.delta, attempt + 1), args.power)
        more = (
            f"a fresh window of about {need:,} pairs would certify with probability "
            f"{args.power:.0%} if traffic stays like this one"
            if need is not None
            else "no window size would: tier 0 does not reach the target on this traffic"
        )
        print(f"tier0 certify: refused: {result.reason}; needed: {more}", file=sys.stderr)
        return EXIT_REFUSED
    body = {k: v for k, v in doc.items() if k not in ("version", "schema_version", "kind")}
    body["status"] = "certified"
    body["threshold"] = result.threshold
    body["certification"] = {
        "procedure": t0.PROCEDURE,
        "target": args.target,
        "delta": args.delta,
        "delta_spent": delta,
        "attempt": attempt if ledger is not None else None,
        "ledger": None if ledger is None else str(ledger),
        "margin": args.margin,
        "source": str(args.input),
        "window": window,
        "guarantee": t0.guarantee(result),
        "assumptions": [
            "pairs independent and identically distributed over the window (traffic like it)",
            "the model was trained before the window, on pairs it does not contain",
        ],
        "estimates": {
            "answered_share": float(result.answered[i]),
            "agreement": {
                "point": float(result.agreement[i]),
                "lower_bound": float(result.agreement_lower[i]),
                "level": 1 - delta,
            },
            "answered_agreement": float(result.answered_agreement[i]),
        },
    }
    version = artefact.write_manifest(args.artefact, body)
    print(f"\n{t0.guarantee(result)}\nartefact: {args.artefact} (version {version})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from escalator.tier0 import artefact

    doc = artefact.read_manifest(args.artefact)
    model = artefact.read_model(args.artefact, doc)  # checks the weights' hash
    training = (doc.get("training") or {}).get("window") or {}
    cert = doc.get("certification") or {}
    task = doc.get("task") or {}
    models = doc.get("models") or {}
    print(f"tier-0 artefact {args.artefact}: version {doc.get('version')}, {doc.get('status')}")
    print(
        f"  task {task.get('name')!r} (fingerprint {task.get('fingerprint')}), "
        f"labels {task.get('labels')}"
    )
    print(f"  learned from {models.get('cheap')} -> {models.get('strong')}")
    print(
        f"  trained on {training.get('pairs')} pairs, {training.get('first_ts')} .. "
        f"{training.get('last_ts')}; labels {training.get('labels')}"
    )
    nonzero = int((model.weights != 0).any(axis=1).sum())
    print(
        f"  features {doc.get('features')}; {nonzero:,} of {model.features.width:,} columns "
        f"in use; weights {doc['weights']['file']} "
        f"(sha256 {doc['weights']['sha256'][:12]}..., checked)"
    )
    if cert:
        est = cert.get("estimates") or {}
        print(
            f"  threshold {doc.get('threshold')}: answers {est.get('answered_share', 0):.1%} of "
            f"the certification window ({(cert.get('window') or {}).get('first_ts')} .. "
            f"{(cert.get('window') or {}).get('last_ts')})"
        )
        print(f"  guarantee: {cert.get('guarantee')}")
    else:
        print("  not certified: it answers nothing (escalator tier0 certify)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "tier0", help="train, certify and inspect tier 0 (a local classifier; off by default)"
    )
    cmds = group.add_subparsers(dest="tier0_command", required=True, metavar="COMMAND")

    def window_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--input",
            type=existing_file,
            required=True,
            help="pairs file (JSON lines of id, text, label, ts_ms, cheap_model, strong_model)",
        )
        p.add_argument(
            "--since", type=_time, help="first moment of the window (ISO-8601 or epoch ms)"
        )
        p.add_argument(
            "--until", type=_time, help="end of the window, excluded (ISO-8601 or epoch ms)"
        )

    pairs_p = cmds.add_parser(
        "pairs", help="join the requests and results topics into a pairs file (no group)"
    )
    pairs_p.add_argument(
        "--since", type=_time, help="first request time of the window (ISO-8601 or epoch ms)"
    )
    pairs_p.add_argument(
        "--until", type=_time, help="end of the window, excluded (ISO-8601 or epoch ms)"
    )
    pairs_p.add_argument(
        "--output", type=writable_path, required=True, help="the pairs file to write (JSON lines)"
    )
    pairs_p.set_defaults(func=cmd_pairs)

    train_p = cmds.add_parser("train", help="fit tier 0 on a window of pairs")
    window_args(train_p)
    train_p.add_argument(
        "--output", type=writable_path, required=True, help="manifest NAME.json (weights: NAME.npz)"
    )
    train_p.add_argument(
        "--alpha", type=number(0, lo_open=True), default=1e-5, help="L2 penalty (default 1e-5)"
    )
    train_p.add_argument(
        "--bits",
        type=int,
        choices=range(10, 25),
        default=20,
        metavar="10..24",
        help="2**bits hashed columns (default 20)",
    )
    train_p.set_defaults(func=cmd_train)

    cert_p = cmds.add_parser(
        "certify", help="certify tier 0's threshold on a later window (or refuse)"
    )
    window_args(cert_p)
    cert_p.add_argument(
        "--artefact", type=existing_file, required=True, help="the manifest train wrote"
    )
    cert_p.add_argument(
        "--target",
        type=fraction,
        default=0.98,
        help="agreement with the routed answers (default 0.98)",
    )
    cert_p.add_argument(
        "--delta",
        type=number(0, 1, lo_open=True, hi_open=True),
        default=0.05,
        help="error budget (default 0.05)",
    )
    cert_p.add_argument(
        "--margin",
        type=fraction,
        default=0.10,
        help="refuse when the certified threshold answers more than this less of the traffic "
        "than the best one by point estimate (default 0.10)",
    )
    cert_p.add_argument(
        "--ledger",
        help="attempts ledger (default: tier0-ledger.jsonl beside the artefact; 'none': "
        "certifies nothing you should deploy)",
    )
    cert_p.add_argument(
        "--power",
        type=fraction,
        default=0.8,
        help="the refusal's 'needed' sizes a window to pass with this probability",
    )
    cert_p.set_defaults(func=cmd_certify)

    insp_p = cmds.add_parser("inspect", help="what an artefact holds, its weights checked")
    insp_p.add_argument(
        "--artefact", type=existing_file, required=True, help="the manifest (NAME.json)"
    )
    insp_p.set_defaults(func=cmd_inspect)
