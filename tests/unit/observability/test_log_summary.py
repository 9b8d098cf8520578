"""The log in an outage: the first line of each kind is written, repeats are held back and
counted, one ``log_summary`` line per interval says how many of each; a kind quiet for a whole
interval is written again the next time. At DEBUG everything is written."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from escalator.observability import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The JSON-lines handler on a string, restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    logs.configure("INFO", out, summary_interval_s=3600)  # summaries only when asked
    try:
        yield out
    finally:
        assert logs._HANDLER is not None
        logs._HANDLER.close()
        logs._HANDLER = None
        root.handlers[:], root.level = handlers, level


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    assert logs._HANDLER is not None
    logs._HANDLER.flush()
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_aiokafka_repeats_are_counted_not_written(stream: io.StringIO) -> None:
    """120 identical aiokafka errors and 60 of another kind: two lines, then one summary
    counting 119 + 59 held back by kind."""
    conn = logging.getLogger("aiokafka.conn")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for i in range(120):
        conn.error("Unable connect to node with id %s: %s", 1, f"refused {i}")
        if i % 2:
            fetcher.error("Failed fetch messages from %s: %s", 1, "closed")
    written = _lines(stream)
    assert [line["event"] for line in written] == [
        "Unable connect to node with id 1: refused 0",
        "Failed fetch messages from 1: closed",
    ]
    assert logs._HANDLER is not None
    logs._HANDLER.summarise()
    summary = _lines(stream)[-1]
    assert summary["event"] == "log_summary" and summary["held_back"] == 178
    assert summary["by_kind"] == {
        "aiokafka.conn: Unable connect to node with id %s: %s": 119,
        "aiokafka.consumer.fetcher: Failed fetch messages from %s: %s": 59,
    }


def test_our_repeating_events_and_a_quiet_interval(stream: io.StringIO) -> None:
    """log_repeating: the first line written, repeats counted; after an interval with none,
    the next one is written again. Ordinary log() lines are never held back."""
    engine = logging.getLogger("escalator.engine")
    for _ in range(5):
        logs.log_repeating(engine, "produce_failed", logging.WARNING, error="x")
        logs.log(engine, "dead_letter", logging.WARNING, reason="invalid_json")
    assert logs._HANDLER is not None
    logs._HANDLER.summarise()  # interval 1: 4 repeats held back
    logs._HANDLER.summarise()  # interval 2: nothing happened
    logs.log_repeating(engine, "produce_failed", logging.WARNING, error="y")
    events = [line["event"] for line in _lines(stream)]
    assert events.count("dead_letter") == 5
    assert events.count("produce_failed") == 2
    assert events.count("log_summary") == 1


def test_nothing_is_held_back_at_debug() -> None:
    """ESCALATOR_LOG_LEVEL=DEBUG: every line, as it comes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    logs.configure("DEBUG", out)
    try:
        conn = logging.getLogger("aiokafka.conn")
        for _ in range(10):
            conn.error("Unable connect to node with id %s: %s", 1, "refused")
        assert logs._HANDLER is not None
        logs._HANDLER.flush()
        assert len(out.getvalue().splitlines()) == 10
    finally:
        assert logs._HANDLER is not None
        logs._HANDLER.close()
        logs._HANDLER = None
        root.handlers[:], root.level = handlers, level
