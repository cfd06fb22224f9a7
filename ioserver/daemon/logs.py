"""The daemon's log: one stderr handler, text or JSON lines, and rate-limited lines.

``configure(level, fmt)`` installs the daemon's single handler on the root
logger (``ioserver serve`` calls it once; a reload calls it again with the new
level and format, which swaps the formatter in place). ``[server] log_format``
picks the formatter:

``"text"``
    ``2026-12-04 18:00:00,123 WARNING ioserver: authentication failed from ...``:
    for a person reading a terminal or ``journalctl``.
``"json"``
    one JSON object per line, ``{"time", "level", "logger", "message"}`` plus
    the structured fields of the line (``event``, ``session``, ``peer``...):
    for a log collector, which then needs no regular expression per message.

Structured fields ride on a record as ``extra=fields(event, **values)``: the
text formatter ignores them (the message already says it all), the JSON one
merges them into the object. The events an operator acts on have one line
each: ``session_opened`` / ``session_closed`` (debug), ``auth_failed``
(warning, rate-limited, with the peer's address), ``limit_hit`` (info,
rate-limited, with the limit's name), ``config_reloaded`` / ``reload_refused``.

A flood (a port scanner, a client hammering a limit) must not flood the log
too: :class:`RateLimitedLog` lets ``burst`` lines through per ``window``
seconds, says once that it is dropping the rest, and logs how many it dropped
when the next window opens. The counters in ``/metrics`` count every one.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = [
    "JsonFormatter",
    "RateLimitedLog",
    "announce",
    "configure",
    "fields",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
"""The text line: what ``ioserver serve`` has always written."""

_handler: logging.Handler | None = None
"""The handler ``configure`` installed (the one stderr handler of the daemon)."""


def fields(event: str, **values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the line's event name and fields (JSON output)."""
    return {"fields": {"event": event, **values}}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            for key, value in extra.items():
                entry.setdefault(str(key), value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log at ``level`` ("debug"...) in format ``fmt`` ("text" or "json") to stderr.

    The first call installs the handler on the root logger; later calls (a
    reload) change the level and the format of that same handler, so no line is
    lost or written twice while they change.
    """
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(stream or sys.stderr)
        root.addHandler(_handler)
    _handler.setFormatter(_formatter(fmt))
    root.setLevel(level.upper())


def announce(message: str, **values: Any) -> None:
    """Write ``message`` whatever the log level: what a user must see once (where
    the daemon listens). Plain text on stderr, or a JSON line in the JSON format."""
    handler = _handler
    if handler is None or not isinstance(handler.formatter, JsonFormatter):
        print(message, file=sys.stderr, flush=True)
        return
    record = logging.LogRecord("ioserver.daemon", logging.INFO, __file__, 0, message, None, None)
    record.fields = {"event": "announce", **values}
    handler.handle(record)


class RateLimitedLog:
    """Log at most ``burst`` lines per ``window`` seconds; count the rest.

    The first line dropped in a window is replaced by one saying that more are
    being dropped; when a later window opens, the number dropped is logged.
    Used on the I/O thread only (no lock).
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        what: str,
        burst: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.level = level
        self.what = what
        self.burst = burst
        self.window = window
        self.clock = clock
        self._start = float("-inf")
        self._logged = 0
        self._dropped = 0

    def __call__(self, message: str, *args: Any, extra: dict[str, Any] | None = None) -> bool:
        """Log ``message % args`` unless over the rate; whether it was logged."""
        now = self.clock()
        if now - self._start >= self.window:
            if self._dropped:
                self.logger.log(
                    self.level,
                    "ioserver: %d more %s were not logged",
                    self._dropped,
                    self.what,
                    extra=fields("log_dropped", what=self.what, count=self._dropped),
                )
            self._start = now
            self._logged = self._dropped = 0
        if self._logged < self.burst:
            self._logged += 1
            self.logger.log(self.level, message, *args, extra=extra)
            return True
        if self._dropped == 0:
            self.logger.log(
                self.level,
                "ioserver: more %s in the last %g s than the %d logged: the rest are counted, "
                "not logged, until the next window",
                self.what,
                self.window,
                self.burst,
                extra=fields("log_dropping", what=self.what),
            )
        self._dropped += 1
        return False
