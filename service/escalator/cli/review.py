"""The review console's commands: ``review serve`` and ``review hash``.

``serve`` refuses to start without a tokens or passwords file (nothing is served without
sign-in). ``hash NAME --kind password`` reads the password (twice at a terminal, else one
line of stdin) and prints the file line; ``--kind token`` makes a random token, shows it once
on stderr, and prints the line with its hash.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from escalator.cli._common import check_port_free, settings_from_env
from escalator.errors import EscalatorError


def cmd_serve(args: argparse.Namespace) -> int:
    from escalator.kafka.clients import check_connection
    from escalator.observability import logs
    from escalator.review.auth import load_authenticator
    from escalator.review.service import serve

    settings = settings_from_env(role="review")
    rv = settings.review
    auth = load_authenticator(rv.tokens_file, rv.passwords_file)
    check_port_free(
        settings.metrics_host,
        settings.metrics_port,
        "ESCALATOR_METRICS_PORT",
        "ESCALATOR_METRICS_HOST",
    )
    check_port_free(rv.host, rv.port, "ESCALATOR_REVIEW_PORT", "ESCALATOR_REVIEW_HOST")
    logs.configure(settings.log_level)

    async def main() -> None:
        await check_connection(settings.kafka)
        await serve(settings, auth)

    asyncio.run(main())
    return 0


def _password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise EscalatorError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def cmd_hash(args: argparse.Namespace) -> int:
    from escalator.review.auth import REVIEWER_RE, hash_secret, new_token

    if not REVIEWER_RE.fullmatch(args.name):
        raise EscalatorError(
            f"{args.name!r} is not a reviewer id (letters, digits and ._@+-, up to 64)"
        )
    if args.kind == "token":
        secret = new_token()
        print(f"token for {args.name} (shown once; give it to them): {secret}", file=sys.stderr)
    else:
        secret = _password()
        if len(secret) < 12:
            raise EscalatorError("a review password must have at least 12 characters")
    print(f"{args.name}:{hash_secret(args.kind, secret)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    review = sub.add_parser("review", help="the human tier's review console")
    commands = review.add_subparsers(dest="review_command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the review page (ESCALATOR_REVIEW_HOST:ESCALATOR_REVIEW_PORT, default "
        "127.0.0.1:8080; metrics on ESCALATOR_METRICS_PORT, default 9466)",
    )
    serve.set_defaults(func=cmd_serve)
    hashed = commands.add_parser(
        "hash", help="print a reviewer's line for the tokens or passwords file"
    )
    hashed.add_argument("name", help="the reviewer id, as decisions will record it")
    hashed.add_argument(
        "--kind",
        choices=("password", "token"),
        default="password",
        help="password: read it (twice at a terminal); token: make a random one and show it "
        "once (default password)",
    )
    hashed.set_defaults(func=cmd_hash)
