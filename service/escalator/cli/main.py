"""The one entry point: ``escalator <command>``.

Commands, one module per group (each has a ``register(sub)``; none imports another):
    run, topics create, produce           cli/service.py
    doctor                                cli/doctor.py
    export, calibrate, report             cli/measure.py
    dead-letters summary|replay           cli/deadletters.py
    parked summary|replay                 cli/parked.py
    review serve|hash                     cli/review.py
    kafka, sim, demo                      the escalator-dev package, when it is installed

Helpers the command modules share (settings from the environment, time parsing) are in
cli/_common.py; produce-and-await is kafka/clients.py's. Every expected failure ends as one
line on stderr and a non-zero exit code, never a traceback. Settings are read from
``os.environ`` only through :func:`escalator.config.load_settings`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from escalator import __version__
from escalator.cli import deadletters, doctor, measure, parked, review, service
from escalator.errors import EscalatorError

EXIT_ERROR = 2
#: Packages add commands through this entry-point group (escalator-dev adds kafka, sim, demo).
COMMANDS_GROUP = "escalator.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="escalator", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"escalator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (service, doctor, measure, deadletters, parked, review):
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
    logging.basicConfig(level=os.environ.get("ESCALATOR_LOG_LEVEL", "WARNING").upper())
    # aiokafka logs every refused connection at ERROR; the CLI reports failures in one line.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    parser = build_parser()
    args = parser.parse_args(argv)
    from aiokafka.errors import KafkaError

    try:
        code: int = args.func(args)
    except EscalatorError as exc:
        print(f"escalator: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KafkaError as exc:
        print(f"escalator: error: Kafka: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
