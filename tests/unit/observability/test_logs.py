"""JSON lines: one event per line, hot-path events in the same format, flushed in time; and
every event name the runtime logs is in docs/OPERATIONS.md, "Log events" (and no other)."""

from __future__ import annotations

import ast
import io
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


# -- every event the runtime logs, read from its source, against docs/OPERATIONS.md -------------
# Operators grep and alert on event names: "Log events" in docs/OPERATIONS.md lists each one.
# The names are read with ast from the three ways the runtime logs: ``log``/``log_repeating``/
# ``EventLog`` (observability/logs.py), a method of a ``logging.getLogger(...)`` logger, and a
# line built by hand (a dict with a constant "event" and "level": ``log_summary``). An event
# name passed through a helper's parameter (tier0/watch.py's ``_log``) is followed to the
# helper's callers.

ROOT = Path(__file__).resolve().parents[3]
RUNTIME = ROOT / "service" / "escalator"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
HELPERS = {"log": "info", "log_repeating": "warning", "EventLog": "info"}  # default levels
METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
#: Lines the runtime logs that are not events (free text), and why.
NOT_EVENTS = {
    # cli/main.py at DEBUG, before logging is set up: a command plugin that does not import.
    "commands %s not loaded: %s",
}


@dataclass(frozen=True)
class Emitted:
    event: str
    level: str | None  # None: chosen at run time
    where: str


class _Module:
    """One module's log calls."""

    def __init__(self, where: str, source: str) -> None:
        self.where = where
        self.tree = ast.parse(source)
        self.parent = {
            child: node for node in ast.walk(self.tree) for child in ast.iter_child_nodes(node)
        }
        self.helpers: dict[str, str] = {}  # local name -> helper in observability/logs.py
        self.modules: set[str] = set()  # local names of observability/logs.py itself
        self.loggers: set[str] = set()  # module-level names bound to logging.getLogger(...)
        for statement in self.tree.body:
            if isinstance(statement, ast.Assign) and _is_get_logger(statement.value):
                self.loggers |= {t.id for t in statement.targets if isinstance(t, ast.Name)}
        # Imports inside functions (the CLI's lazy ones) count too.
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module == "escalator.observability.logs":
                for a in node.names:
                    if a.name in HELPERS:
                        self.helpers[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module == "escalator.observability":
                self.modules |= {a.asname or a.name for a in node.names if a.name == "logs"}
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "escalator.observability.logs":
                        assert a.asname, f"{self.at(node)}: import logs with a name to read"
                        self.modules.add(a.asname)

    def at(self, node: ast.AST) -> str:
        return f"{self.where}:{getattr(node, 'lineno', '?')}"

    def emitted(self) -> list[Emitted]:
        found: list[Emitted] = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Dict):
                fields = {
                    k.value: v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)
                }
                name, named = fields.get("event"), fields.get("level")
                # A line of its own (not the formatters', whose event is the record's).
                if isinstance(name, ast.Constant) and isinstance(named, ast.Constant):
                    found.append(Emitted(str(name.value), str(named.value), self.at(node)))
            if not isinstance(node, ast.Call):
                continue
            helper = self.helper(node.func)
            if helper is not None:
                event = _arg(node, 1, "event")
                assert event is not None, f"{self.at(node)}: {helper} without an event"
                level = _level(node.args[2]) if len(node.args) > 2 else HELPERS[helper]
                found += [Emitted(e, level, self.at(node)) for e in self.names(event)]
            elif (
                isinstance(node.func, ast.Attribute)
                and node.func.attr in METHODS
                and (
                    (isinstance(node.func.value, ast.Name) and node.func.value.id in self.loggers)
                    or _is_get_logger(node.func.value)
                )
            ):
                method = node.func.attr
                message = node.args[1] if method == "log" else node.args[0]
                level = (
                    _level(node.args[0])
                    if method == "log"
                    else ("error" if method == "exception" else method)
                )
                for e in self.names(message):
                    if e in NOT_EVENTS:
                        continue
                    assert EVENT_NAME.match(e), f"{self.at(node)}: free text, not an event: {e!r}"
                    found.append(Emitted(e, level, self.at(node)))
            elif (
                isinstance(node.func, ast.Attribute)
                and node.func.attr in METHODS
                and isinstance(
                    first := _arg(node, 1 if node.func.attr == "log" else 0, "msg"), ast.Constant
                )
                and isinstance(first.value, str)
                and EVENT_NAME.match(first.value)
            ):
                # An event logged through a logger this finder does not follow (a parameter,
                # an attribute): read it, or it would be missing from both sides unseen.
                raise AssertionError(
                    f"{self.at(node)}: {first.value!r} logged through a logger not read: "
                    f"{ast.unparse(node.func.value)}"
                )
        return found

    def helper(self, func: ast.expr) -> str | None:
        if isinstance(func, ast.Name):
            return self.helpers.get(func.id)
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in self.modules
            and func.attr in HELPERS
        ):
            return func.attr
        return None

    def names(self, node: ast.expr) -> list[str]:
        """The event names ``node`` can take: a string, either branch of ``a if c else b``, or
        a parameter of the enclosing function, followed to that function's calls here."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            return self.names(node.body) + self.names(node.orelse)
        if isinstance(node, ast.Name):
            function: ast.AST | None = node
            while function is not None and not isinstance(function, ast.FunctionDef):
                function = self.parent.get(function)
            if function is not None:
                params = [a.arg for a in function.args.posonlyargs + function.args.args]
                if node.id in params:
                    index = params.index(node.id)
                    calls = [
                        c
                        for c in ast.walk(self.tree)
                        if isinstance(c, ast.Call)
                        and isinstance(c.func, ast.Name)
                        and c.func.id == function.name
                    ]
                    args = [a for c in calls if (a := _arg(c, index, node.id)) is not None]
                    assert args, f"{self.at(node)}: {function.name}() is never called here"
                    return [name for a in args for name in self.names(a)]
        raise AssertionError(f"{self.at(node)}: an event name not read: {ast.unparse(node)}")


def _arg(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _is_get_logger(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "getLogger"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "logging"
    )


def _level(node: ast.expr) -> str | None:
    """``logging.WARNING`` -> "warning"; None for a level chosen at run time."""
    if isinstance(node, ast.Attribute) and node.attr in LEVELS:
        return node.attr.lower()
    return None


def emitted(sources: dict[str, str]) -> list[Emitted]:
    """Every event logged by ``sources`` (where -> Python source)."""
    return [e for where, source in sources.items() for e in _Module(where, source).emitted()]


def runtime_events() -> list[Emitted]:
    return emitted({str(p.relative_to(ROOT)): p.read_text() for p in sorted(RUNTIME.rglob("*.py"))})


def log_events_section() -> str:
    found = re.search(r"^## Log events\n(.*?)(?=^## |\Z)", OPERATIONS.read_text(), re.M | re.S)
    assert found is not None, "docs/OPERATIONS.md has no '## Log events' section"
    return found.group(1)


def documented() -> dict[str, set[str]]:
    """The table of "Log events": event -> the levels its row names."""
    rows: dict[str, set[str]] = {}
    for line in log_events_section().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([a-z0-9_]+)`", cells[0])
        assert name is not None, f"one event name per row: {cells[0]!r}"
        assert name.group(1) not in rows, f"{name.group(1)}: two rows"
        rows[name.group(1)] = set(re.findall(r"[a-z]+", cells[1]))
    return rows


def test_the_event_finder_finds_each_way_the_runtime_logs() -> None:
    """Not passing by finding nothing: a floor, and one known event of each call shape."""
    found = {e.event for e in runtime_events()}
    assert len(found) >= 60
    assert {
        "decision",  # EventLog
        "log_summary",  # a line built by hand (observability/logs.py)
        "model_call_failed",  # log(), default level
        "produce_failed",  # log_repeating()
        "api_hold",  # "api_hold" if reason else "api_hold_cleared"
        "api_hold_cleared",
        "tier0_still_withdrawn",  # through tier0/watch.py's _log(event, ...)
        "transactional_producer_failed",  # logger.exception() and log_repeating()
    } <= found


def test_the_event_finder_refuses_what_it_cannot_read() -> None:
    """A name it cannot read, free text where an event goes, and an event logged through a
    logger it does not follow all fail the finder; a helper's parameter and the module imported
    under a name are followed."""
    imports = "import logging\nfrom escalator.observability.logs import log\n"
    imports += "logger = logging.getLogger('x')\n"
    with pytest.raises(AssertionError, match="not read"):
        emitted({"a.py": imports + "log(logger, 'prefix_' + kind)\n"})
    with pytest.raises(AssertionError, match="free text"):
        emitted({"b.py": imports + "logger.warning('it failed: %s', why)\n"})
    shapes = emitted(
        {"c.py": imports + "def f(e):\n    log(logger, e, logging.ERROR)\nf('one')\nf('two')\n"}
    )
    assert [(e.event, e.level) for e in shapes] == [("one", "error"), ("two", "error")]
    with pytest.raises(AssertionError, match=r"logger not read: self\._logger"):
        emitted(
            {"d.py": imports + "class A:\n    def f(self):\n        self._logger.info('gone')\n"}
        )
    with pytest.raises(AssertionError, match="logger not read: given"):
        emitted({"e.py": imports + "def f(given):\n    given.log(logging.INFO, 'gone')\n"})
    aliased = "import escalator.observability.logs as L\nL.log(x, 'seen')\n"
    assert [e.event for e in emitted({"f.py": aliased})] == ["seen"]


def test_every_event_is_in_operations_and_every_row_is_still_logged() -> None:
    """docs/OPERATIONS.md, "Log events": a row per event the runtime logs, at the levels it
    logs it, and no row for an event it no longer logs."""
    found = runtime_events()
    rows = documented()
    names = {e.event for e in found}
    assert sorted(names - set(rows)) == [], "logged, but not in OPERATIONS.md's Log events"
    assert sorted(set(rows) - names) == [], "in OPERATIONS.md's Log events, no longer logged"
    for name, levels in rows.items():
        known = {e.level for e in found if e.event == name}
        assert known - {None} <= levels, f"{name}: logged at {known - {None}}"
        if None not in known:
            assert levels <= known, f"{name}: documented at {sorted(levels - known)}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_log_events_links_lead_somewhere() -> None:
    """Each link in "Log events" names a heading of its document."""
    for target, anchor in re.findall(r"\]\(([\w./]*)#([\w-]+)\)", log_events_section()):
        doc = OPERATIONS.parent / target if target else OPERATIONS
        headings = re.findall(r"^#{1,6} (.+)$", doc.read_text(), re.M)
        assert anchor in {_slug(h) for h in headings}, f"{target}#{anchor}: no such heading"
