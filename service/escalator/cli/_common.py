"""What the command modules share: settings from the environment, time parsing, the checks of
flag values, ports and the broker that run before a command does any work. Command modules
import this, never each other. (Produce-and-await is ``kafka.clients``'s: the dev tools use it
too.)"""

from __future__ import annotations

import argparse
import asyncio
import errno
import math
import os
import socket
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from escalator.config import TOPIC_RE, KafkaSettings, Settings, load_settings
from escalator.errors import ConfigError, EscalatorError

T = TypeVar("T")


def settings_from_env(*, require_kafka: bool = True, role: str = "cheap") -> Settings:
    """The settings, validated once; a bad value is one line naming the variable. ``role``
    picks ESCALATOR_METRICS_PORT's default (config.DEFAULT_METRICS_PORTS)."""
    return load_settings(os.environ, require_kafka=require_kafka, role=role)


def parse_time(value: str | None, name: str) -> int | None:
    """``--since``/``--until``: ISO-8601 (UTC if no zone) or epoch milliseconds -> epoch ms."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EscalatorError(f"{name} {value!r} is not ISO-8601 or epoch milliseconds") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# -- flag types: argparse reports a bad value as one line naming the flag ----------------------
def integer(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``lo`` to ``hi`` (no upper bound if None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"at least {lo}" if hi is None else f"from {lo} to {hi}"
            raise argparse.ArgumentTypeError(f"{value} must be {bound}")
        return value

    return parse


def number(
    lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] (``lo_open``/``hi_open``: excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low_ok = value > lo if lo_open else value >= lo
        high_ok = value < hi if hi_open else value <= hi
        if not math.isfinite(value) or not (low_ok and high_ok):
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(f"{text} must be in {left}{lo:g}, {hi:g}{right}")
        return value

    return parse


#: A probability or share: [0, 1].
fraction = number(0.0, 1.0)


def topic_name(text: str) -> str:
    """An argparse type: a legal Kafka topic name."""
    if not TOPIC_RE.match(text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r} is not a legal Kafka topic name")
    return text


def existing_file(text: str) -> Path:
    """An argparse type: a file that exists (``-`` is not accepted)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def writable_path(text: str) -> Path:
    """An argparse type: a file path whose directory exists (the file may not, yet)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: directory {path.parent} does not exist")
    return path


# -- before any work: a port that is free, a broker that answers -------------------------------
def check_port_free(host: str, port: int, variable: str, host_variable: str | None = None) -> None:
    """Raise ConfigError naming ``variable`` if ``host:port`` cannot be listened on (in use,
    or the host, named by ``host_variable``, is not an address of this machine). Port 0 (any
    free port) passes if the host does.

    Checked before anything starts, so that a clash is one line rather than a failure after
    the service has joined its group. The listener binds again when it starts; a port taken in
    between fails there, translated in the same words by the CLI.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"{host_variable or variable}={host}: cannot listen there ({exc.strerror})"
        ) from exc
    if port == 0:
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the listeners do (aiohttp, asyncio): a port in TIME_WAIT is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(port_error(variable, host, port, exc)) from exc


def port_error(variable: str, host: str, port: int, exc: OSError) -> str:
    """The one line for a listener that could not bind."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{variable}={port}: port {port} on {host} is already in use (another escalator "
            f"process? give each its own {variable}; 0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return f"{variable}={port}: not allowed to listen on port {port} (below 1024?)"
    return f"{variable}={port}: cannot listen on {host}:{port}: {exc.strerror or exc}"


def run_with_kafka(
    kafka: KafkaSettings, work: Callable[[], Coroutine[Any, Any, T]], *, timeout_s: float = 15.0
) -> T:
    """Connect to the broker once (so that an unreachable or misconfigured one is named in one
    line, see ``kafka.clients.check_connection``), then run ``work()`` in the same loop."""
    from escalator.kafka.clients import check_connection

    async def main() -> T:
        await check_connection(kafka, timeout_s=timeout_s)
        return await work()

    return asyncio.run(main())
