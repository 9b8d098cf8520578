"""JSON-lines logging: one event name and keyword fields per line.

``log(logger, "decision", id=..., tier=...)`` writes ``{"ts":..., "level":..., "event":
"decision", "id": ...}``. Request text is never logged unless ESCALATOR_LOG_TEXT is set, and
no secret is ever passed here.

No line per retry: what repeats while something is down (aiokafka's own warnings and errors,
one per failed request, about 120 a second in a broker outage; and our events logged with
:func:`log_repeating`) goes through a :class:`Summariser`: the first line of each kind is
written, the repeats are counted, and one ``log_summary`` line per interval says how many of
each were held back. A kind that stays quiet for a whole interval is written again the next
time it happens. At ESCALATOR_LOG_LEVEL=DEBUG every line is written.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from collections import Counter
from typing import Any, TextIO

import orjson

from escalator.contract.messages import iso_from

_HANDLER: BufferedLineHandler | None = None
#: Loggers (and their children) whose warnings and errors are summarised: the Kafka client
#: logs a line for every failed attempt of its own retries.
SUMMARISED_LOGGERS = ("aiokafka",)
#: One ``log_summary`` line per this many seconds, while lines are being held back.
SUMMARY_INTERVAL_S = 60.0
#: The summary names this many kinds at most (the most frequent), and counts the rest.
SUMMARY_KINDS = 10


class Summariser(logging.Filter):
    """Writes the first record of each kind, holds back and counts its repeats (see the module
    docstring). A kind is the logger and the message template (for our events, the event
    name). Thread-safe: records arrive from any thread, the summary is taken by the flusher."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._seen: set[str] = set()  # kinds written, or held back, in this interval
        self._active: set[str] = set()  # kinds that occurred in the current interval
        self._held: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "repeating", False) and not _summarised(record.name):
            return True
        kind = f"{record.name}: {record.msg}"
        with self._lock:
            self._active.add(kind)
            if kind not in self._seen:
                self._seen.add(kind)
                return True
            self._held[kind] += 1
        return False

    def take(self) -> Counter[str]:
        """The repeats held back since the last call; kinds quiet since then are forgotten."""
        with self._lock:
            held, self._held = self._held, Counter()
            self._seen &= self._active
            self._active = set()
        return held


def _summarised(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in SUMMARISED_LOGGERS)


def summary_line(held: Counter[str], interval_s: float) -> str:
    """The ``log_summary`` line for ``held`` (kind -> repeats held back)."""
    kinds = dict(held.most_common(SUMMARY_KINDS))
    other = sum(held.values()) - sum(kinds.values())
    if other:
        kinds["(other kinds)"] = other
    payload = {
        "ts": iso_from(time.time()),
        "level": "warning",
        "logger": "escalator.logs",
        "event": "log_summary",
        "interval_s": interval_s,
        "held_back": sum(held.values()),
        "by_kind": kinds,
    }
    return orjson.dumps(payload).decode()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": iso_from(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class BufferedLineHandler(logging.Handler):
    """Writes lines in chunks: at 64 KiB, every 0.2 s (a daemon thread), at WARNING and above,
    and at exit. A write per line cost a third of the per-record time at 15k decisions/s. A
    crash can lose at most 0.2 s of INFO lines; warnings and errors are written at once.
    """

    def __init__(
        self,
        stream: TextIO,
        max_bytes: int = 64 * 1024,
        max_delay_s: float = 0.2,
        summariser: Summariser | None = None,
        summary_interval_s: float = SUMMARY_INTERVAL_S,
    ):
        super().__init__()
        self.stream = stream
        self.summariser = summariser
        if summariser is not None:
            self.addFilter(summariser)
        self._summary_s = summary_interval_s
        self._last_summary = time.monotonic()
        self._lines: list[str] = []
        self._size = 0
        self._max_bytes = max_bytes
        self._stop_flush = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_every, args=(max_delay_s,), name="log-flush", daemon=True
        )
        self._flusher.start()
        atexit.register(self.close)

    def _flush_every(self, interval_s: float) -> None:
        while not self._stop_flush.wait(interval_s):
            if time.monotonic() - self._last_summary >= self._summary_s:
                self.summarise()
            self.flush()

    def summarise(self) -> None:
        """Append the ``log_summary`` line of what was held back since the last one, if any."""
        self._last_summary = time.monotonic()
        if self.summariser is not None:
            held = self.summariser.take()
            if held:
                self.append_line(summary_line(held, self._summary_s), urgent=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
            return
        self.append_line(line, urgent=record.levelno >= logging.WARNING)

    def append_line(self, line: str, urgent: bool = False) -> None:
        self._lines.append(line)  # list.append is atomic; flush() swaps the list under the lock
        self._size += len(line)
        if urgent or self._size >= self._max_bytes:
            self.flush()

    def close(self) -> None:
        self._stop_flush.set()
        self.summarise()  # what was held back since the last summary is counted, not lost
        self.flush()
        super().close()

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self._lines, self._size = self._lines, [], 0
            if lines:
                self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the stream is gone (closed at exit): nothing left to do with these lines
        finally:
            self.release()


def configure(
    level: str = "INFO",
    stream: TextIO | None = None,
    *,
    summary_interval_s: float = SUMMARY_INTERVAL_S,
) -> None:
    # One decision line per record is on the hot path: skip what our JSON lines never show
    # (caller frame lookup, thread and process names). _srcfile=None is the documented way
    # to turn off findCaller's stack walk.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    global _HANDLER
    if _HANDLER is not None:
        _HANDLER.close()
    summariser = None if level.upper() == "DEBUG" else Summariser()
    handler = _HANDLER = BufferedLineHandler(
        stream or sys.stderr, summariser=summariser, summary_interval_s=summary_interval_s
    )
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every failed connection attempt at ERROR; they are retried and counted.
    quiet = max(logging.getLevelName(level), logging.WARNING)
    # aiokafka is chatty at INFO; the SDK's HTTP client logs one line per model call.
    for name in ("aiokafka", "httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(quiet)


def log(logger: logging.Logger, event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def log_repeating(
    logger: logging.Logger, event: str, level: int = logging.WARNING, /, **fields: Any
) -> None:
    """:func:`log` for an event that repeats while something is down (a failed send retried,
    a commit that will be retried): the first is written, repeats are counted in the
    ``log_summary`` line (see :class:`Summariser`)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields, "repeating": True})


class EventLog:
    """A hot-path event (one line per decision): same stream and format as every other line,
    but built with one orjson call and appended to the line buffer directly. Through LogRecord
    and the handler chain it cost a quarter of the pipeline's throughput (B1 in BENCHMARKS.md).
    Falls back to the logging module when :func:`configure` was not called (e.g. under pytest).
    """

    def __init__(self, logger_name: str, event: str) -> None:
        self._logger = logging.getLogger(logger_name)
        self._name = logger_name
        self._event = event

    def __call__(self, fields: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        handler = _HANDLER
        if handler is None or self._logger.handlers or not self._logger.propagate:
            log(self._logger, self._event, **fields)
            return
        head = {
            "ts": iso_from(time.time()),
            "level": "info",
            "logger": self._name,
            "event": self._event,
        }
        handler.append_line(orjson.dumps(head | fields, default=str).decode())
