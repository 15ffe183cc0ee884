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
