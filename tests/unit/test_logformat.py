"""The text log format: the date formatted once a second prints what logging's own
Formatter prints for every record."""

from __future__ import annotations

import logging
import time

from servicerouter.logformat import TEXT_FORMAT, TextFormatter


def test_text_formatter_prints_what_the_standard_formatter_prints() -> None:
    ours, standard = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    start = time.time()
    lines = []
    for i in range(3000):  # steps of 7 ms across ~21 second boundaries, and back in time
        record = logging.LogRecord("servicerouter.engine", logging.INFO, __file__, 1,
                                   "/web: +%d tasks", (i,), None)
        record.created = start + (i * 0.007 if i < 2500 else -(i * 0.003))
        record.msecs = (record.created - int(record.created)) * 1000
        lines.append(ours.format(record))
        assert lines[-1] == standard.format(record)
    assert lines[0].endswith(" INFO servicerouter.engine: /web: +0 tasks")


import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from servicerouter import logformat  # noqa: E402


@pytest.fixture
def root_logging() -> Iterator[io.StringIO]:
    """configure() on a root logger restored afterwards; its handler writes to the
    returned buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logformat._direct)
    out = io.StringIO()
    try:
        yield out
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logformat._direct = saved[2]


def _configure(out: io.StringIO, level: str, fmt: str = "text") -> None:
    logformat.configure(level, fmt)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)


STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def test_log_lines_prints_what_logger_info_prints(root_logging: io.StringIO) -> None:
    _configure(root_logging, "info")
    log = logging.getLogger("servicerouter.engine")
    lines = ["/web: +1 -1 tasks, runtime, 3 commands, 0 ms", "/api: 100% +0 -1 tasks"]
    log_lines = logformat.log_lines
    assert logformat._direct_handler(log, logging.INFO) is not None  # the direct path
    log_lines(log, logging.INFO, lines)
    direct = root_logging.getvalue()
    root_logging.seek(0)
    root_logging.truncate()
    for line in lines:
        log.info("%s", line)
    standard = root_logging.getvalue()
    assert re.sub(STAMP, "T", direct) == re.sub(STAMP, "T", standard)
    assert re.fullmatch(rf"({STAMP} INFO servicerouter\.engine: [^\n]+\n){{2}}", direct)


def test_log_lines_is_suppressed_by_the_level(root_logging: io.StringIO) -> None:
    _configure(root_logging, "warning")
    logformat.log_lines(logging.getLogger("servicerouter.engine"), logging.INFO, ["/web: x"])
    assert root_logging.getvalue() == ""


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_log_lines_goes_through_records_when_anything_else_listens(
        root_logging: io.StringIO) -> None:
    _configure(root_logging, "info")
    log = logging.getLogger("servicerouter.engine")
    other = Collect()  # another handler (as pytest's caplog adds one)
    logging.getLogger().addHandler(other)
    try:
        logformat.log_lines(log, logging.INFO, ["/web: +1 -0 tasks"])
    finally:
        logging.getLogger().removeHandler(other)
    assert [r.getMessage() for r in other.records] == ["/web: +1 -0 tasks"]
    assert root_logging.getvalue().endswith(" INFO servicerouter.engine: /web: +1 -0 tasks\n")
    log.addFilter(lambda record: False)  # a filter that drops everything: still honoured
    try:
        logformat.log_lines(log, logging.INFO, ["/web: dropped"])
    finally:
        log.filters.clear()
    assert "dropped" not in root_logging.getvalue()


def test_log_lines_in_json_format_are_json_records(root_logging: io.StringIO) -> None:
    _configure(root_logging, "info", "json")
    logformat.log_lines(logging.getLogger("servicerouter.engine"), logging.INFO,
                        ["/web: +1 -0 tasks"])
    doc = json.loads(root_logging.getvalue())
    assert (doc["level"], doc["logger"], doc["message"]) == (
        "INFO", "servicerouter.engine", "/web: +1 -0 tasks")


def test_a_failing_stream_is_reported_as_logging_reports_it(
        root_logging: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    _configure(root_logging, "info")
    root_logging.close()  # writing raises ValueError: handleError reports, nothing raises
    logformat.log_lines(logging.getLogger("servicerouter.engine"), logging.INFO, ["/web"])
    assert "Logging error" in capsys.readouterr().err
