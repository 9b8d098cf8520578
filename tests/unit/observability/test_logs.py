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
