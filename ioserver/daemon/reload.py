"""Reloading the daemon's configuration without dropping a session (SIGHUP, ``reload``).

What a reload changes, and when it takes effect:

- ``server.log_level`` and ``server.log_format``: the next log line.
- ``[limits]``: sessions and ports opened from now on (a connected session
  keeps the message limits it started with; port and session counts are
  checked against the new values at the next open).
- ``[spawn] allow``: the next ``spawn``.
- ``server.token`` / the content of ``server.token_file``: the next ``hello``
  (rotation); sessions that already authenticated stay.
- TLS certificate files: new handshakes, through :func:`reload_tls`.

What it can't change: ``server.socket``, ``server.tcp``, ``server.loop``,
``[metrics] listen`` (the listeners are bound once) and turning TLS on or
off; a change to one is logged ("... needs a restart") and the running value
kept. A file that doesn't load is logged with the message ``ioserver serve``
gives for it ("ioserver: bad configuration: ...") and nothing changes.

Threads: the signal handler (main thread) only schedules :meth:`Reloader.start`
on the loop: it runs in the main thread, where signals are delivered, and the
loop runs in the I/O thread, so ``loop.add_signal_handler`` (main thread only)
is not available; ``call_soon_threadsafe`` takes no lock the interrupted main
thread could hold. On the loop, reading and validating the files (the config,
the token file, certificates) runs in the daemon's worker pool, never on the
I/O thread; only the swap of ``daemon.config`` (one attribute: every reader on
the loop sees the old or the new config whole) and the log level run there.
Reloads run one at a time, in the order asked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Set
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ..config import Config, ConfigError, load
from ..server import IOServer
from . import logs
from .counters import Counters
from .tls import load_server_context, set_contexts

__all__ = ["ConfigSource", "Reloader", "changed_keys", "reload_tls"]

log = logging.getLogger("ioserver.daemon")

RESTART_ONLY: Final = (
    "server.socket",
    "server.tcp",
    "server.loop",
    "server.slow_callback_ms",
    "metrics.listen",
)
"""Keys a running daemon can't change: the listeners are bound at start, and the I/O
thread's watchdog is made with it."""
SECRET: Final = ("server.token",)
"""Keys whose values never go to the log (only that they changed)."""


class Daemon(Protocol):
    """What a reload reads and sets (``serve.Daemon``; a Protocol: no import cycle)."""

    config: Config

    @property
    def io(self) -> IOServer: ...
    @property
    def pool(self) -> Executor: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def sessions(self) -> Set[Any]: ...
    @property
    def servers(self) -> list[Any]: ...


@dataclass(frozen=True)
class ConfigSource:
    """Where the daemon's configuration comes from: a file (or the defaults) with
    the command line's overrides on top, read the same way at start and at each
    reload (so ``--token-file`` is re-read too, and overrides keep winning)."""

    path: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def read(self) -> Config:
        """Read and validate (blocking: file I/O); ConfigError says what is wrong."""
        return load(self.path).with_server(**self.overrides)


def reload_tls(daemon: Daemon, config: Config) -> Callable[[], None] | None:
    """The TLS hook of a reload: read ``config``'s certificate files (a worker
    thread; raise ConfigError, as at start, if they don't load) and return what
    installs them on the loop (``tls.set_contexts``: new handshakes get them,
    established sessions keep theirs), or None without TLS. Turning TLS on or
    off is restart-only (:meth:`Reloader._read`): the listener changes kind."""
    context = load_server_context(config.server)
    if context is None:
        return None
    servers = daemon.servers

    def install() -> None:
        set_contexts(servers, context)

    return install


def _flatten(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in dataclasses.fields(config):
        table = getattr(config, section.name)
        for key in dataclasses.fields(table):
            out[f"{section.name}.{key.name}"] = getattr(table, key.name)
    return out


def changed_keys(old: Config, new: Config) -> list[str]:
    """The ``section.key`` names whose values differ (``server.token`` included when
    only the token file's content changed)."""
    before, after = _flatten(old), _flatten(new)
    return [key for key in after if before.get(key) != after[key]]


def _describe(key: str, old: Config, new: Config) -> str:
    if key in SECRET:
        return key
    before, after = _flatten(old)[key], _flatten(new)[key]
    return f"{key} ({before!r} -> {after!r})"


def _keep_listeners(old: Config, new: Config) -> Config:
    """``new`` with the restart-only keys of ``old`` (ConfigError if that combination
    is invalid, e.g. the running TCP listener with the token removed); with TLS
    turned on or off, the running TLS keys too."""
    server = dataclasses.replace(
        new.server,
        socket=old.server.socket,
        tcp=old.server.tcp,
        loop=old.server.loop,
        slow_callback_ms=old.server.slow_callback_ms,
    )
    if _tls_toggled(old, new):
        server = dataclasses.replace(
            server,
            tls_cert=old.server.tls_cert,
            tls_key=old.server.tls_key,
            tls_client_ca=old.server.tls_client_ca,
        )
    return dataclasses.replace(new, server=server, metrics=old.metrics)


def _tls_toggled(old: Config, new: Config) -> bool:
    """TLS turned on or off (a plain listener can't become a TLS one, or back)."""
    return bool(old.server.tls_cert) != bool(new.server.tls_cert)


class Reloader:
    """Reloads one Daemon's configuration from its ConfigSource (I/O thread)."""

    def __init__(self, daemon: Daemon, source: ConfigSource | None) -> None:
        self.daemon = daemon
        self.source = source
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, reason: str) -> None:
        """Begin a reload (loop thread; fire and forget: the log says how it went).
        What the SIGHUP handler schedules."""
        self.submit(reason)

    def submit(self, reason: str) -> asyncio.Task[dict[str, Any]]:
        """Begin a reload (loop thread): the task of :meth:`reload` (kept referenced
        until done, so it can't be collected half-way)."""
        task = self.daemon.io.loop.create_task(self.reload(reason))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, ConfigError):  # a ConfigError was logged already
                log.error("ioserver: reload failed: %r", exc)

    def _read(self) -> tuple[Config, list[str], Callable[[], None] | None]:
        """Worker thread: the new config, the restart-only keys it changes, the TLS step."""
        old = self.daemon.config
        if self.source is None:
            raise ConfigError("this daemon was started from a Config object, not a file")
        new = self.source.read()
        restart = [key for key in changed_keys(old, new) if key in RESTART_ONLY]
        if _tls_toggled(old, new):
            restart.append("server.tls_cert")
        if restart:
            new = _keep_listeners(old, new)
        return new, restart, reload_tls(self.daemon, new)

    async def reload(self, reason: str) -> dict[str, Any]:
        """Re-read and apply (loop thread). Returns ``{"changed": [keys],
        "restart_needed": [keys]}``; raises ConfigError (logged) for a bad file."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            counters = self.daemon.counters
            try:
                new, restart, install_tls = await loop.run_in_executor(self.daemon.pool, self._read)
            except ConfigError as exc:
                counters.reloads["refused"] += 1
                log.error(
                    "ioserver: bad configuration: %s (reload on %s refused: the running "
                    "configuration stays)",
                    exc,
                    reason,
                    extra=logs.fields("reload_refused", reason=reason, error=str(exc)),
                )
                raise
            return self._apply(new, restart, install_tls, reason)

    def _apply(
        self,
        new: Config,
        restart: list[str],
        install_tls: Callable[[], None] | None,
        reason: str,
    ) -> dict[str, Any]:
        """Loop thread: swap the config in, then say what changed."""
        daemon = self.daemon
        old = daemon.config
        for key in restart:
            log.warning(
                "ioserver: %s changed in the configuration: it needs a restart "
                "(ioserver keeps %r until then)",
                key,
                _flatten(old)[key],
                extra=logs.fields("restart_needed", key=key),
            )
        changed = changed_keys(old, new)
        daemon.config = new
        if install_tls is not None:
            install_tls()
        if old.server.log_level != new.server.log_level or (
            old.server.log_format != new.server.log_format
        ):
            logs.configure(new.server.log_level, new.server.log_format)
        daemon.counters.reloads["ok"] += 1
        what = ", ".join(_describe(key, old, new) for key in changed) or "nothing changed"
        log.info(
            "ioserver: configuration reloaded on %s: %s; %d sessions kept",
            reason,
            what,
            len(daemon.sessions),
            extra=logs.fields(
                "config_reloaded", reason=reason, changed=changed, restart_needed=restart
            ),
        )
        return {"changed": changed, "restart_needed": restart}
