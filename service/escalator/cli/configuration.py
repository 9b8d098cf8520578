"""``escalator config``: the configuration a process would start with, checked offline.

It reads the environment exactly as ``escalator run`` (or ``review serve``) does, prints every
setting with its effective value and where it came from (the environment, or the default),
secrets never shown, then validates what start-up validates beyond the variables: the task,
price, model-profile and thresholds files, the labels they name, the ports it would listen on.
It connects to nothing (``escalator doctor`` checks the API and Kafka). Exit 0 when all is
valid; otherwise the one line naming the variable, exit 2, as ``run`` would.

Variables that look like ours (``ESCALATOR_*``) but that no setting reads are listed too: a
misspelt name is otherwise silently ignored.
"""

from __future__ import annotations

import argparse
import difflib
import os

from escalator.cli._common import check_port_free
from escalator.config import Settings, Source, explain_settings, redacted_url

#: ESCALATOR_* variables read by the development tools and the tests, not by the service.
NOT_SETTINGS = frozenset(
    {
        "ESCALATOR_CACHE_DIR",
        "ESCALATOR_RELIABILITY_SCALE",
        "ESCALATOR_RELIABILITY_REPORT",
        "ESCALATOR_CALIBRATION_SCALE",
        "ESCALATOR_ARTEFACTS_DIR",
        "ESCALATOR_UPDATE_SCREENSHOTS",
        "ESCALATOR_TOOLS",
        "ESCALATOR_B7_DURATION_S",
    }
)


def cmd_config(args: argparse.Namespace) -> int:
    role = args.tier
    settings, sources = explain_settings(os.environ, role=role)
    notes = _validate(settings, role)
    print(f"escalator config: what `{_command(role)}` would start with")
    _print_sources(settings, sources)
    unread = _unread(sources)
    if unread:
        print("\nset, but not read by any setting (misspelt?):")
        for line in unread:
            print(f"  {line}")
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  {note}")
    print(
        "\nok: every setting and file is valid. Next: `escalator doctor` checks the models, "
        "prices, prompt cache and Kafka topics against the real services."
    )
    return 0


def _command(role: str) -> str:
    return "escalator review serve" if role == "review" else f"escalator run --tier {role}"


def _validate(settings: Settings, role: str) -> list[str]:
    """Everything start-up checks without a network: files, labels, ports. ConfigError on
    the first problem; notes for what is valid but likely unmeant."""
    from escalator.kafka.clients import security_kwargs

    notes: list[str] = []
    security_kwargs(settings.kafka)  # the TLS files load
    check_port_free(
        settings.metrics_host,
        settings.metrics_port,
        "ESCALATOR_METRICS_PORT",
        "ESCALATOR_METRICS_HOST",
    )
    if role == "review":
        from escalator.review.auth import load_authenticator

        rv = settings.review
        load_authenticator(rv.tokens_file, rv.passwords_file)
        check_port_free(rv.host, rv.port, "ESCALATOR_REVIEW_PORT", "ESCALATOR_REVIEW_HOST")
        return notes
    from escalator.app import load_parts
    from escalator.model.stack import anthropic_client
    from escalator.tiers.table import tiers_to_run

    tiers = tiers_to_run(role, settings)
    parts = load_parts(settings, tiers)
    notes += parts.notes
    client = anthropic_client(settings)  # the key-or-URL rule; constructing connects nowhere
    del client
    task = parts.task
    notes.append(
        f"task {task.name!r} (version {task.version}): labels {', '.join(task.labels)}; "
        f"instructions {len(task.instructions):,} characters"
    )
    t = parts.thresholds
    per_label = ", ".join(f"{k}={v:g}" for k, v in sorted(t.per_label.items()))
    notes.append(
        f"thresholds {t.version}: escalate below {t.default:g}"
        + (f" ({per_label})" if per_label else "")
    )
    if settings.model.simulated:
        where = redacted_url(settings.model.base_url or "")
        notes.append(f"no ANTHROPIC_API_KEY: model calls go to {where} (simulated)")
    return notes


def _print_sources(settings: Settings, sources: list[Source]) -> None:
    width = max(len(s.variable) for s in sources)
    for s in sources:
        value = s.value
        if s.variable == "ANTHROPIC_BASE_URL" and value:
            value = redacted_url(value)
        shown = value if value else "(unset)"
        source = "environment" if s.from_environment else "default"
        print(f"  {s.variable:<{width}}  {shown:<28}  {source}")


def _unread(sources: list[Source]) -> list[str]:
    """ESCALATOR_* variables that are set but that no setting read, with a guess."""
    read = {s.variable for s in sources}
    out = []
    for name in sorted(os.environ):
        if not name.startswith("ESCALATOR_") or name in read or name in NOT_SETTINGS:
            continue
        guess = difflib.get_close_matches(name, sorted(read), n=1)
        out.append(f"{name}" + (f" (did you mean {guess[0]}?)" if guess else ""))
    return out


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser(
        "config",
        help="print the effective configuration (value and source of every setting) and "
        "check it, files included; connects to nothing (run this first)",
        description="Print every setting with its effective value and its source "
        "(environment or default; secrets are never shown), and validate what start-up "
        "validates: the variables, the task, prices, profiles and thresholds files, the labels "
        "they name, and the ports to listen on. Exit 0 if valid, else one line and exit 2. "
        "Connects to nothing: `escalator doctor` checks the API and Kafka.",
    )
    config.add_argument(
        "--tier",
        choices=["cheap", "strong", "lane", "all", "review"],
        default="all",
        help="check for `run --tier cheap|strong|lane|all` or for `review serve` (default: all)",
    )
    config.set_defaults(func=cmd_config)
