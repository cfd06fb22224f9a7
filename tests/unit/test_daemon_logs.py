"""The daemon's log helpers (ioserver/daemon/logs.py) on their own: the rate limit over
windows (with a clock the test advances, not real minutes) and the JSON line."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from ioserver.daemon.logs import JsonFormatter, RateLimitedLog, fields


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_over_windows(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("ioserver.test.ratelimit")
    clock = Clock()
    limited = RateLimitedLog(logger, logging.WARNING, "things", burst=2, window=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert [limited("thing %d", i) for i in range(5)] == [True, True, False, False, False]
        clock.now += 59.0
        assert not limited("thing 5")  # still the same window
        clock.now += 1.0
        assert limited("thing 6")  # a new window: the count of the dropped first
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "thing 0",
        "thing 1",
        "ioserver: more things in the last 60 s than the 2 logged: the rest are counted, "
        "not logged, until the next window",
        "ioserver: 4 more things were not logged",
        "thing 6",
    ]
    assert caplog.records[3].fields == {"event": "log_dropped", "what": "things", "count": 4}


def test_json_lines_carry_the_fields_and_the_exception() -> None:
    record = logging.LogRecord(
        "ioserver.daemon", logging.WARNING, __file__, 1, "a %s\nline", ("two",), None
    )
    record.fields = fields("auth_failed", peer="127.0.0.1:5", message="not overwritten")["fields"]
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "a two\nline" and entry["level"] == "warning"
    assert entry["event"] == "auth_failed" and entry["peer"] == "127.0.0.1:5"
    assert entry["time"].endswith("+00:00") and "ValueError: boom" in entry["exception"]
