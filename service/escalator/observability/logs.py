"""JSON-lines logging: one event name and keyword fields per line.

``log(logger, "decision", id=..., tier=...)`` writes ``{"ts":..., "level":..., "event":
"decision", "id": ...}``. Request text is never logged unless ESCALATOR_LOG_TEXT is set, and
no secret is ever passed here.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from typing import Any, TextIO

import orjson

from escalator.contract.messages import iso_from

_HANDLER: BufferedLineHandler | None = None


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

    def __init__(self, stream: TextIO, max_bytes: int = 64 * 1024, max_delay_s: float = 0.2):
        super().__init__()
        self.stream = stream
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
            self.flush()

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


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
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
    handler = _HANDLER = BufferedLineHandler(stream or sys.stderr)
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
