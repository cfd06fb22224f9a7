"""``[metrics] listen``: the daemon's counters as a Prometheus endpoint (``GET /metrics``).

prometheus_client (the ``metrics`` extra) writes the exposition format and runs
the HTTP server, on threads of its own: the I/O thread never serves HTTP.

How a scrape reads counters the I/O thread owns without a lock and without
blocking it: the scrape's thread schedules :func:`snapshot_on_loop` on the loop
(``call_soon_threadsafe``: a deque append and a wakeup, nothing the loop holds)
and waits for its answer, a plain dict, at most :data:`SCRAPE_WAIT` seconds.
The time the loop took to run it is ``ioserver_loop_lag_seconds``: how long a
client's request would have waited right then. A loop that doesn't answer in
time gets the last snapshot served again with the lag so far (a stalled daemon
still answers its scrape, and says it is stalled). The scrape does not go
through the IOServer's request queue, so ``ioserver_loop_requests_total`` and
the wakeup counters count the clients' work, not the monitoring's.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator, Set
from typing import Any, Final, Protocol

from .. import __version__, protocol
from ..server import IOServer
from .counters import Counters
from .session import Session

__all__ = ["MetricsError", "MetricsServer", "snapshot_on_loop"]

log = logging.getLogger("ioserver.daemon")

SCRAPE_WAIT: Final = 2.0
"""Seconds a scrape waits for the I/O thread's snapshot before serving the last one."""

_CODE_NAMES: Final = {code: name for name, code in protocol.ERROR_CODES.items()}

#: ``IOServer.stats()`` counters: stats key -> (metric name without _total, help).
_LOOP_COUNTERS: Final = (
    ("requests", "ioserver_loop_requests", "Requests the I/O thread ran (opens, writes, timers)."),
    ("batches", "ioserver_loop_batches", "Times the I/O thread woke up and drained its queue."),
    ("pipe_writes", "ioserver_loop_pipe_writes", "Wakeups paid for: self-pipe writes."),
    ("empty_wakeups", "ioserver_loop_empty_wakeups", "Wakeups that found no request."),
    ("skipped_wakeups", "ioserver_loop_skipped_wakeups", "Timer requests that needed no wakeup."),
    ("ports_opened", "ioserver_ports_opened", "Ports opened since the start."),
    ("stalls", "ioserver_loop_stalls", "Times the I/O thread's watchdog saw the loop stalled."),
)
#: Gauges in ``IOServer.stats()``: stats key -> (metric name, help, scale).
_LOOP_GAUGES: Final = (
    ("pending", "ioserver_loop_pending_requests", "Requests waiting for the I/O thread.", 1.0),
    ("max_batch", "ioserver_loop_max_batch", "The most requests run in one drain.", 1.0),
    (
        "longest_batch_ms",
        "ioserver_loop_longest_batch_seconds",
        "The longest drain of the request queue.",
        0.001,
    ),
    (
        "longest_stall_ms",
        "ioserver_loop_longest_stall_seconds",
        "The longest stall the watchdog saw.",
        0.001,
    ),
)


class Daemon(Protocol):
    """What metrics read of the daemon (``serve.Daemon``; a Protocol: no import cycle)."""

    @property
    def io(self) -> IOServer: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def sessions(self) -> Set[Session]: ...
    @property
    def unauthenticated(self) -> Set[Session]: ...


class MetricsError(Exception):
    """Metrics are configured but can't be served (the extra missing, the port taken)."""


def snapshot_on_loop(daemon: Daemon) -> dict[str, Any]:
    """Everything a scrape exports, copied on the I/O thread (plain values only)."""
    stats = daemon.io.stats()
    counters = daemon.counters.snapshot()
    by_kind: dict[str, int] = {}
    for session in daemon.sessions:
        if session in daemon.unauthenticated:
            continue
        by_kind[session.kind] = by_kind.get(session.kind, 0) + 1
        counters["events"] += session.events
        counters["bytes_in"] += session.bytes_in
        counters["bytes_out"] += session.bytes_out
    for session in daemon.unauthenticated:
        counters["bytes_in"] += session.bytes_in
        counters["bytes_out"] += session.bytes_out
    return {
        "stats": stats,
        "counters": counters,
        "sessions": by_kind,
        "unauthenticated": len(daemon.unauthenticated),
    }


class _Collector:
    """The prometheus_client collector: one snapshot per scrape, turned into families."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.last: dict[str, Any] | None = None
        self.lock = threading.Lock()  # scrapes may run at once (one thread each)

    def describe(self) -> list[Any]:
        return []  # no collect() at registration: the loop may not run yet

    def _snapshot(self) -> tuple[dict[str, Any] | None, float]:
        """(the loop's snapshot, or the last one if it doesn't answer in time; the lag)."""
        answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        asked = time.monotonic()
        lag: list[float] = []

        def on_loop() -> None:
            lag.append(time.monotonic() - asked)
            try:
                answer.set_result(snapshot_on_loop(self.daemon))
            except BaseException as exc:  # report it to the scrape, keep the loop going
                answer.set_exception(exc)

        try:
            self.daemon.io.loop.call_soon_threadsafe(on_loop)
            snapshot = answer.result(SCRAPE_WAIT)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            log.warning("ioserver: metrics: the I/O thread did not answer the scrape: %r", exc)
            with self.lock:
                return self.last, time.monotonic() - asked
        with self.lock:
            self.last = snapshot
        return snapshot, lag[0] if lag else time.monotonic() - asked

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot, lag = self._snapshot()
        yield GaugeMetricFamily(
            "ioserver_loop_lag_seconds",
            "Seconds the I/O thread took to run this scrape's snapshot (its responsiveness).",
            value=lag,
        )
        if snapshot is None:
            return
        stats, counters = snapshot["stats"], snapshot["counters"]

        info = GaugeMetricFamily(
            "ioserver_info",
            "The daemon's version, event loop and core.",
            labels=["version", "loop", "core"],
        )
        info.add_metric([__version__, str(stats.get("loop")), str(stats.get("core"))], 1)
        yield info

        requests = CounterMetricFamily(
            "ioserver_requests", "Client requests by method.", labels=["method"]
        )
        for method, n in sorted(counters["requests"].items()):
            requests.add_metric([method], n)
        yield requests
        errors = CounterMetricFamily(
            "ioserver_errors",
            "Errors sent to clients (error responses and error events) by code.",
            labels=["code", "error"],
        )
        for code, n in sorted(counters["errors"].items()):
            errors.add_metric([str(code), _CODE_NAMES.get(code, "OTHER")], n)
        yield errors
        yield CounterMetricFamily(
            "ioserver_events", "Events sent to clients.", value=counters["events"]
        )
        yield CounterMetricFamily(
            "ioserver_bytes_in", "Bytes received from clients.", value=counters["bytes_in"]
        )
        yield CounterMetricFamily(
            "ioserver_bytes_out", "Bytes sent to clients.", value=counters["bytes_out"]
        )
        yield CounterMetricFamily(
            "ioserver_auth_failures",
            "Failed authentications (wrong or no token, no hello in time).",
            value=counters["auth_failures"],
        )
        yield CounterMetricFamily(
            "ioserver_limit_hits",
            "Requests or connections refused by a configured limit (errors with code 5).",
            value=counters["limit_hits"],
        )
        reloads = CounterMetricFamily(
            "ioserver_config_reloads", "Configuration reloads by result.", labels=["result"]
        )
        for result, n in sorted(counters["reloads"].items()):
            reloads.add_metric([result], n)
        yield reloads

        sessions = GaugeMetricFamily(
            "ioserver_sessions", "Connected client sessions by kind.", labels=["kind"]
        )
        opened = CounterMetricFamily(
            "ioserver_sessions_opened", "Client sessions admitted by kind.", labels=["kind"]
        )
        for kind in ("unix", "tcp"):
            sessions.add_metric([kind], snapshot["sessions"].get(kind, 0))
            opened.add_metric([kind], counters["sessions_opened"].get(kind, 0))
        yield sessions
        yield opened
        yield GaugeMetricFamily(
            "ioserver_sessions_unauthenticated",
            "TCP connections that have not completed hello yet.",
            value=snapshot["unauthenticated"],
        )
        ports = GaugeMetricFamily("ioserver_open_ports", "Open ports by kind.", labels=["kind"])
        for kind, n in sorted((stats.get("ports") or {}).items()):
            ports.add_metric([str(kind)], n)
        yield ports

        for key, name, text in _LOOP_COUNTERS:
            if isinstance(stats.get(key), int | float):
                yield CounterMetricFamily(name, text, value=stats[key])
        for key, name, text, scale in _LOOP_GAUGES:
            if isinstance(stats.get(key), int | float):
                yield GaugeMetricFamily(name, text, value=stats[key] * scale)


class MetricsServer:
    """prometheus_client's HTTP server on its own (daemon) thread, for one Daemon."""

    def __init__(self, daemon: Daemon, host: str, port: int) -> None:
        """Bind ``host:port`` and serve; :class:`MetricsError` if it can't."""
        try:
            from prometheus_client import CollectorRegistry, start_http_server
            from prometheus_client.process_collector import ProcessCollector
        except ImportError:
            raise MetricsError(
                "[metrics] listen is set but prometheus_client is not installed: "
                "pip install 'ioserver[metrics]', or set [metrics] listen = \"\""
            ) from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(daemon))
        ProcessCollector(registry=registry)  # CPU, memory, open fds of the daemon
        try:
            self.httpd, self.thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        bound = self.httpd.server_address
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving (a scrape in progress finishes) and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout)
