"""Log output: text for people (default), one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, with the date and time of ``asctime`` formatted once a second,
    not per record (``strftime`` was a tenth of the cost of a log line; under churn the
    daemon logs a line per apply step, hundreds a second). Same output."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: int | None = None
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created, record.msecs)

    def stamp(self, created: float, msecs: float) -> str:
        """``asctime`` of a record made at ``created`` (``msecs`` into its second)."""
        second = int(created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        msec = self.default_msec_format
        return msec % (self._text, msecs) if msec else self._text

    def format(self, record: logging.LogRecord) -> str:
        """``TEXT_FORMAT`` without the generic machinery (same text; a record with an
        exception or a stack goes the generic way)."""
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        return f"{record.asctime} {record.levelname} {record.name}: {record.message}"


class JsonFormatter(logging.Formatter):
    """``{"time": ..., "level": "INFO", "logger": ..., "message": ...}`` per record, plus
    ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


# The handler configure() installed with the text format: lines that would reach only
# it are written by log_lines() without a LogRecord.
_direct: logging.StreamHandler[Any] | None = None


def _direct_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[Any] | None:
    """The installed text handler if a record of ``level`` from ``logger`` would reach
    that handler alone, through no filter (the daemon as configure() set it up); else
    None (another handler or filter, a test's capture, a level that drops it)."""
    handler = _direct
    if handler is None or not logger.isEnabledFor(level) or handler.filters \
            or level < handler.level:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.handlers:
            return handler if node.handlers == [handler] and node.parent is None else None
        if not node.propagate:
            return None
        node = node.parent
    return None


def log_lines(logger: logging.Logger, level: int, lines: Iterable[str]) -> None:
    """``logger.log(level, "%s", line)`` for each line, the same text out; when only the
    handler of configure() would see them, written straight to its stream (a LogRecord
    and its dispatch were most of the cost of the INFO line per apply step, hundreds a
    second under churn). Suppressed below the logger's level, like any record."""
    handler = _direct_handler(logger, level)
    if handler is None:
        for line in lines:
            logger.log(level, "%s", line)
        return
    formatter = handler.formatter
    assert isinstance(formatter, TextFormatter)
    name, levelname = logger.name, logging.getLevelName(level)
    for line in lines:
        created = time.time()
        stamp = formatter.stamp(created, int((created - int(created)) * 1000))  # as LogRecord
        text = f"{stamp} {levelname} {name}: {line}{handler.terminator}"
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except Exception:
            handler.handleError(logger.makeRecord(name, level, "(unknown file)", 0, "%s",
                                                  (line,), None))
        finally:
            handler.release()


def configure(level: str, fmt: str = "text") -> None:
    """Root logging for the process: ``fmt`` is ``text`` or ``json``."""
    # Neither format shows the caller, thread or process: skip looking them up for
    # every record (the logging HOWTO's "Optimization"; a few % of CPU under churn).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _direct
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    _direct = handler if fmt != "json" else None
