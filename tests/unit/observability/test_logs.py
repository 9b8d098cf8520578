"""JSON lines: one event per line, hot-path events in the same format, flushed in time."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import orjson
import pytest

from escalator.observability import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("INFO", stream=out)
    yield out
    assert logs._HANDLER is not None
    logs._HANDLER.close()
    logs._HANDLER = None
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_event_log_writes_the_same_shape_as_the_logging_path(stream: io.StringIO) -> None:
    """A decision written on the hot path looks like any other JSON line."""
    logs.EventLog("escalator.decisions", "decision")({"id": "r1", "cost_usd": 1e-5})
    logs.log(logging.getLogger("escalator.decisions"), "decision", id="r2", cost_usd=2e-5)
    assert logs._HANDLER is not None
    logs._HANDLER.flush()
    first, second = lines(stream)
    assert first.keys() == second.keys()
    assert first["event"] == second["event"] == "decision"
    assert first["logger"] == "escalator.decisions" and first["id"] == "r1"
    assert str(first["ts"]).endswith("Z")


def test_warnings_are_written_at_once_and_info_within_the_flush_interval(
    stream: io.StringIO,
) -> None:
    """WARNING lines are not buffered; INFO lines appear within about 0.2 s."""
    logging.getLogger("x").warning("boom")
    assert "boom" in stream.getvalue()
    logging.getLogger("x").info("later")
    deadline = time.monotonic() + 2
    while "later" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "later" in stream.getvalue()


def test_level_filters_hot_path_events(stream: io.StringIO) -> None:
    """At WARNING, decision events are not written."""
    logging.getLogger().setLevel("WARNING")
    logs.EventLog("escalator.decisions", "decision")({"id": "r1"})
    assert logs._HANDLER is not None
    logs._HANDLER.flush()
    assert stream.getvalue() == ""


# -- in an outage: the first line of each kind is written, repeats are held back and counted,
# one ``log_summary`` line per interval says how many of each; a kind quiet for a whole
# interval is written again the next time. At DEBUG everything is written.
@pytest.fixture
def summarised() -> Iterator[io.StringIO]:
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


def test_aiokafka_repeats_are_counted_not_written(summarised: io.StringIO) -> None:
    """120 identical aiokafka errors and 60 of another kind: two lines, then one summary
    counting 119 + 59 held back by kind."""
    conn = logging.getLogger("aiokafka.conn")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for i in range(120):
        conn.error("Unable connect to node with id %s: %s", 1, f"refused {i}")
        if i % 2:
            fetcher.error("Failed fetch messages from %s: %s", 1, "closed")
    written = _lines(summarised)
    assert [line["event"] for line in written] == [
        "Unable connect to node with id 1: refused 0",
        "Failed fetch messages from 1: closed",
    ]
    assert logs._HANDLER is not None
    logs._HANDLER.summarise()
    summary = _lines(summarised)[-1]
    assert summary["event"] == "log_summary" and summary["held_back"] == 178
    assert summary["by_kind"] == {
        "aiokafka.conn: Unable connect to node with id %s: %s": 119,
        "aiokafka.consumer.fetcher: Failed fetch messages from %s: %s": 59,
    }


def test_our_repeating_events_and_a_quiet_interval(summarised: io.StringIO) -> None:
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
    events = [line["event"] for line in _lines(summarised)]
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
