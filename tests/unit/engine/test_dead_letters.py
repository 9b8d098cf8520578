"""engine/dead_letters.py: the one dead-letter writer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from escalator.contract.messages import DeadLetterInfo
from escalator.engine.dead_letters import dead_letter
from escalator.errors import InvalidRequest


@dataclass
class Rec:
    topic: str = "requests"
    partition: int = 2
    offset: int = 41
    key: bytes | None = b"k"
    value: bytes | None = b"{not json"
    headers: Any = field(
        default_factory=lambda: [("traceparent", b"00-abc-01"), ("x-escalator-reason", b"old")]
    )


def test_a_dead_letter_is_the_record_plus_why_and_where_from(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Key and value as they came; the caller's headers kept but for upstream x-escalator-*
    ones; reason, error and source in ours; extra headers after them; one log line, on the
    caller's logger, without the record's value."""
    logger = logging.getLogger("escalator.test-dead-letters")
    error = InvalidRequest("value is not JSON")
    out = dead_letter(
        Rec(), error, tier="cheap", topic="dlq", logger=logger, extra=[("x-extra", b"1")]
    )
    assert (out.topic, out.key, out.value) == ("dlq", b"k", b"{not json")
    names = [name for name, _ in out.headers]
    assert names[0] == "traceparent" and names[-1] == "x-extra"
    assert names.count("x-escalator-reason") == 1
    info = DeadLetterInfo.from_headers(out.headers)
    assert (info.reason, info.source_topic, info.source_partition, info.source_offset) == (
        "invalid_request",
        "requests",
        2,
        41,
    )
    assert info.tier == "cheap"
    (line,) = [r for r in caplog.records if r.name == logger.name]
    assert line.getMessage() == "dead_letter" and line.levelno == logging.WARNING
    assert "{not json" not in caplog.text


def test_a_record_without_a_value_is_dead_lettered_empty() -> None:
    out = dead_letter(
        Rec(value=None, key=None), InvalidRequest("empty"), tier="review", topic="dlq",
        logger=logging.getLogger("x"),
    )  # fmt: skip
    assert (out.key, out.value) == (None, b"")
