"""What the command modules share: settings from the environment and time parsing. Command
modules import this, never each other. (Produce-and-await is ``kafka.clients``'s: the dev
tools use it too.)"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from escalator.config import Settings, load_settings
from escalator.errors import EscalatorError


def settings_from_env(*, require_kafka: bool = True) -> Settings:
    """The settings, validated once; a bad value is one line naming the variable."""
    return load_settings(os.environ, require_kafka=require_kafka)


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
