"""The one entry point: ``escalator <command>``.

Commands, one module per group (each has a ``register(sub)``; none imports another):
    config                                cli/configuration.py
    run, topics create, produce           cli/service.py
    read results|dead-letters             cli/read.py
    doctor                                cli/doctor.py
    export, calibrate, report             cli/measure.py
    dead-letters summary|replay           cli/deadletters.py
    parked summary|replay                 cli/parked.py
    review serve|hash                     cli/review.py
    tier0 pairs|train|certify|inspect     cli/tier0.py
    kafka, sim, demo                      the escalator-dev package, when it is installed

Helpers the command modules share (settings from the environment, time parsing, flag types,
the port and broker checks) are in cli/_common.py; produce-and-await is kafka/clients.py's.

Every expected failure ends as one line on stderr and exit code 2, never a traceback: a bad
flag (argparse, through :class:`OneLineParser`), a bad setting (ConfigError names the
variable; ESCALATOR_LOG_LEVEL is checked before logging is configured), and what goes wrong
at run time in the words of the boundary that met it (EscalatorError, and aiokafka's
KafkaError and the OS's OSError, translated here, once). Settings are read from
``os.environ`` only through :func:`escalator.config.load_settings`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from escalator import __version__
from escalator.cli import (
    configuration,
    deadletters,
    doctor,
    measure,
    parked,
    read,
    review,
    service,
    tier0,
)
from escalator.config import log_level
from escalator.errors import EscalatorError

EXIT_ERROR = 2
#: Packages add commands through this entry-point group (escalator-dev adds kafka, sim, demo).
COMMANDS_GROUP = "escalator.commands"


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (and exit code 2), not usage plus a line.

    Sub-command parsers are of the same class (argparse makes them with its parser's type)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="escalator",
        description="Classify text from a Kafka topic with the cheapest Claude model that does "
        "the job. Start with `escalator config`, then `escalator doctor`.",
    )
    parser.add_argument("--version", action="version", version=f"escalator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (
        configuration,
        service,
        read,
        doctor,
        measure,
        deadletters,
        parked,
        review,
        tier0,
    ):
        group.register(sub)
    for plugin in entry_points(group=COMMANDS_GROUP):
        try:
            register = plugin.load()
        except ImportError as exc:  # installed but broken: the service's commands still work
            logging.getLogger("escalator.cli").debug("commands %s not loaded: %s", plugin, exc)
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Validated before logging is configured: logging would refuse it with a traceback.
        level = log_level(os.environ)
    except EscalatorError as exc:
        return fail(str(exc))
    # Commands that serve (run, review serve) configure JSON logs from the settings; the
    # others log warnings only, unless ESCALATOR_LOG_LEVEL asks for more.
    logging.basicConfig(level=level if os.environ.get("ESCALATOR_LOG_LEVEL") else "WARNING")
    # aiokafka logs every refused connection at ERROR; the CLI reports failures in one line.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exited:
        if exited.code in (0, None):
            raise  # --help, --version: argparse's own exit
        return EXIT_ERROR  # a bad flag, already printed in one line
    from aiokafka.errors import KafkaError

    try:
        code: int = args.func(args)
    except EscalatorError as exc:
        return fail(str(exc))
    except KafkaError as exc:
        return fail(f"Kafka: {exc}")
    except OSError as exc:  # a file, a socket: the OS's words, with the path if there is one
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130
    return code


def fail(message: str) -> int:
    """Print ``message`` as the one error line (whitespace and newlines folded) -> exit 2."""
    print(f"escalator: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
