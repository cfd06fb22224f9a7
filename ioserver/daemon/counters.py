"""The daemon's cumulative counters: what ``/metrics`` exports beyond ``IOServer.stats()``.

A session counts its own requests, events and bytes while it lives (``ioserver
stats`` shows them per session); these counters outlive sessions, so a
monitoring system sees totals that only ever grow (Prometheus counters). They
are plain ints and dicts, written on the I/O thread only and read there too,
by the snapshot a scrape asks the loop for (``metrics.py``): no lock.

Label values are bounded: a method that is not in the protocol's table counts
as ``"unknown"`` (a client must not mint new time series by sending junk).
"""

from __future__ import annotations

from typing import Any, Final

from .. import protocol

__all__ = ["UNKNOWN_METHOD", "Counters"]

UNKNOWN_METHOD: Final = "unknown"
"""The ``method`` label of requests for a method the protocol doesn't have."""


class Counters:
    """Totals since the daemon started (I/O thread only)."""

    __slots__ = (
        "auth_failures",
        "bytes_in",
        "bytes_out",
        "errors",
        "events",
        "limit_hits",
        "reloads",
        "requests",
        "sessions_opened",
    )

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        """Client requests by method (known methods, else :data:`UNKNOWN_METHOD`)."""
        self.errors: dict[int, int] = {}
        """Errors sent to clients (error responses and ``error`` events) by code."""
        self.sessions_opened: dict[str, int] = {}
        """Sessions admitted by kind ("unix", "tcp")."""
        self.events = 0
        """Events of closed sessions (live ones are summed at each snapshot)."""
        self.bytes_in = 0
        """Bytes received from closed sessions' clients (live ones: at each snapshot)."""
        self.bytes_out = 0
        """Bytes sent to closed sessions' clients (live ones: at each snapshot)."""
        self.auth_failures = 0
        """Failed authentications (wrong or missing token, no hello in time...)."""
        self.limit_hits = 0
        """Errors with code LIMIT sent to clients (a configured limit was hit)."""
        self.reloads: dict[str, int] = {"ok": 0, "refused": 0}
        """Configuration reloads applied and refused (an invalid file)."""

    def request(self, method: Any) -> None:
        """A client request for ``method`` (any value a client sent)."""
        name = method if isinstance(method, str) and method in protocol.METHODS else UNKNOWN_METHOD
        self.requests[name] = self.requests.get(name, 0) + 1

    def error(self, code: Any) -> None:
        """An error with ``code`` was sent to a client."""
        key = code if type(code) is int else -1
        self.errors[key] = self.errors.get(key, 0) + 1
        if key == protocol.LIMIT:
            self.limit_hits += 1

    def session_closed(self, events: int, bytes_in: int, bytes_out: int) -> None:
        """A session ends: its totals move from the live sum into these counters."""
        self.events += events
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def snapshot(self) -> dict[str, Any]:
        """A copy safe to hand to another thread."""
        return {
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "sessions_opened": dict(self.sessions_opened),
            "events": self.events,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "auth_failures": self.auth_failures,
            "limit_hits": self.limit_hits,
            "reloads": dict(self.reloads),
        }
