"""The standalone daemon's configuration: TOML in, a validated frozen ``Config`` out.

``load(path)`` reads a TOML file (``config/ioserver.toml`` documents every key
and its default; loading it gives exactly ``Config()``), ``from_mapping(data)``
validates an already-parsed mapping. Either raises :class:`ConfigError` at
start, never later, with a message that names the key, the bad value and what
was expected (``"limits.sessions: expected an int >= 1, got -3"``), because a
daemon that refuses to start should say exactly why.

Sections and keys (defaults in parentheses):

``[server]``
    ``socket`` (``""``: the default path, see :func:`default_socket_path`),
    ``tcp`` (``""``: off; else ``"host:port"``), ``token`` / ``token_file``
    (``""``), ``insecure`` (false), ``loop`` ("auto"), ``log_level`` ("info"),
    ``log_format`` ("text"), ``tls_cert`` / ``tls_key`` / ``tls_client_ca``
    (``""``: the TCP listener speaks TLS with that PEM certificate and key; with a
    CA, clients must present a certificate it signed; see ``ioserver.daemon.tls``),
    ``slow_callback_ms`` (100: the I/O thread's watchdog; 0 turns it off).
``[limits]``
    ``sessions`` (1000), ``ports_per_session`` (1000), ``max_frame_bytes``
    (16 MiB), ``max_message_bytes`` (16 MiB), ``pending_bytes`` (4 MiB),
    ``max_elements`` (100000), ``max_depth`` (64), ``hello_timeout`` (5.0),
    ``unauthenticated`` (64).
``[spawn]``
    ``allow`` (``[]``: spawn disabled).
``[metrics]``
    ``listen`` (``""``: off; else ``"host:port"`` of the Prometheus endpoint).

Security rules, checked whenever a Config is built (also by
``dataclasses.replace``, so a ``--tcp`` override can't skip them):

- TCP without a token is refused unless ``insecure = true``: a localhost port
  is reachable by every local user (Neovim's warning), and a client may spawn
  allowed programs.
- A token has at least 16 characters (:data:`MIN_TOKEN_LENGTH`).
- ``token_file`` must exist, be a regular file and not be readable or
  writable by group or others (mode 0600 or stricter): refused otherwise, as
  ssh refuses a private key with loose permissions, since a warning in a
  daemon's log is easily missed. Its content, stripped of surrounding
  whitespace, becomes ``token``. ``token`` and ``token_file`` exclude each other.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LOOPS",
    "MAX_DEPTH_LIMIT",
    "MIN_TOKEN_LENGTH",
    "SHIPPED_CONFIG",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "MetricsConfig",
    "ServerConfig",
    "SpawnConfig",
    "default_socket_path",
    "from_mapping",
    "load",
    "read_token_file",
]


class ConfigError(ValueError):
    """Raised by ``load``, ``from_mapping`` and the Config classes for a bad
    configuration (the operator's mistake): the message names the key."""


LOOPS: Final = ("auto", "uvloop", "asyncio")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
MIN_TOKEN_LENGTH: Final = 16
MAX_DEPTH_LIMIT: Final = 500
"""The most ``limits.max_depth`` may be: msgpack's packer refuses deeper values."""
SHIPPED_CONFIG: Final = Path(__file__).resolve().parent.parent / "config" / "ioserver.toml"
"""The documented default configuration in a source checkout (absent from a wheel)."""

_MIB: Final = 1024 * 1024


def _fail(key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {value!r}")


def _check_str(key: str, value: object) -> str:
    if type(value) is not str:
        raise _fail(key, "a string", value)
    return value


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices or type(value) is not str:
        raise _fail(key, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def _check_int(key: str, value: object, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise _fail(key, f"an int >= {minimum}", value)
    return value


def _check_number(key: str, value: object, minimum: float) -> float:
    """An int or float > ``minimum`` (TOML writes 5 and 5.0 alike), as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > minimum:
        raise _fail(key, f"a number > {minimum:g}", value)  # (not > also refuses nan)
    return float(value)


def default_socket_path(environ: Mapping[str, str] | None = None) -> str:
    """Where the daemon listens when ``server.socket`` is "":
    ``$XDG_RUNTIME_DIR/ioserver.sock`` (a per-user 0700 directory) if that is set
    to an absolute path, else ``<tempdir>/ioserver-<uid>/ioserver.sock`` (the
    daemon creates that directory 0700 and checks it is its own)."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "ioserver.sock")
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return os.path.join(tempfile.gettempdir(), f"ioserver-{uid}", "ioserver.sock")


def _parse_tcp(value: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:7000"`` for IPv6) as ``(host, port)``; ValueError if not."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(value)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(value)  # a bare IPv6 address is ambiguous: use brackets
    port = int(port_text)
    if not host or port > 65535:
        raise ValueError(value)
    return host, port


def _check_tls(server: ServerConfig) -> None:
    """``tls_cert`` and ``tls_key`` go together; ``tls_client_ca`` needs them. (The
    files themselves are read when the daemon starts: ``daemon.tls.load_server_context``.)"""
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        _check_str(f"server.{key}", getattr(server, key))
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError(
            "server.tls_cert and server.tls_key go together: set both (PEM files: the "
            "certificate chain and its private key) or neither"
        )
    if server.tls_client_ca and not server.tls_cert:
        raise ConfigError(
            "server.tls_client_ca needs server.tls_cert and server.tls_key: client "
            "certificates are checked only on a TLS listener"
        )


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where the daemon listens, who may connect, how it runs."""

    socket: str = ""
    """Unix socket path; "" for :func:`default_socket_path`. Created 0600."""
    tcp: str = ""
    """"host:port" to listen on TCP too ("[::1]:7000" for IPv6); "" for no TCP."""
    token: str = ""
    """The shared secret clients give in ``hello`` (required first over TCP)."""
    token_file: str = ""
    """A file holding the token (mode 0600); its content becomes ``token``."""
    insecure: bool = False
    """Allow ``tcp`` without a token (any local user can then connect)."""
    tls_cert: str = ""
    """PEM certificate (chain) of the TCP listener; with ``tls_key`` it speaks TLS."""
    tls_key: str = ""
    """PEM private key of ``tls_cert`` (mode 0600 or stricter, not encrypted)."""
    tls_client_ca: str = ""
    """PEM CA certificate(s): TLS clients must present a certificate one of them signed."""
    loop: str = "auto"
    """Event loop: "auto" (uvloop if installed), "uvloop" or "asyncio"."""
    log_level: str = "info"
    """Logging threshold on stderr: "debug", "info", "warning" or "error"."""
    log_format: str = "text"
    """Log lines on stderr: "text" (for people) or "json" (one object a line)."""
    slow_callback_ms: int = 100
    """Warn (with its stack) about a callback holding the I/O thread longer; 0: off."""

    def __post_init__(self) -> None:
        if type(self.slow_callback_ms) is not int or self.slow_callback_ms < 0:
            raise _fail("server.slow_callback_ms", "an integer >= 0", self.slow_callback_ms)
        _check_str("server.socket", self.socket)
        _check_str("server.tcp", self.tcp)
        _check_str("server.token", self.token)
        _check_str("server.token_file", self.token_file)
        if type(self.insecure) is not bool:
            raise _fail("server.insecure", "true or false", self.insecure)
        _check_choice("server.loop", self.loop, LOOPS)
        _check_choice("server.log_level", self.log_level, LOG_LEVELS)
        _check_choice("server.log_format", self.log_format, LOG_FORMATS)
        if self.tcp:
            try:
                _parse_tcp(self.tcp)
            except ValueError:
                raise _fail(
                    "server.tcp", '"" (off) or "host:port" (e.g. "127.0.0.1:7000")', self.tcp
                ) from None
        if self.token and len(self.token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"server.token: expected at least {MIN_TOKEN_LENGTH} characters, got "
                f"{len(self.token)}; make one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if self.tcp and not self.token and not self.insecure:
            raise ConfigError(
                f"server.tcp = {self.tcp!r} needs a token: every local user can reach a TCP "
                "port. Set server.token_file (or `ioserver serve --token-file`) to a file "
                "(mode 0600) holding a random token "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))'), or "
                "server.token; or set server.insecure = true to accept clients without one"
            )
        _check_tls(self)

    def socket_path(self) -> str:
        """The Unix socket path to use: ``socket`` (``~`` expanded) or the default."""
        if self.socket:
            return os.path.expanduser(self.socket)
        return default_socket_path()

    def tcp_address(self) -> tuple[str, int] | None:
        """``tcp`` as ``(host, port)``, or None when TCP is off."""
        return _parse_tcp(self.tcp) if self.tcp else None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: what one client may take; each is answered with an error naming it."""

    sessions: int = 1000
    """Connected clients at once; one more is refused."""
    ports_per_session: int = 1000
    """Open ports (and timers) per client."""
    max_frame_bytes: int = 16 * _MIB
    """Largest frame a port may decode (packet modes), and the most a client may ask for."""
    max_message_bytes: int = 16 * _MIB
    """Largest msgpack-rpc message a client may send; a bigger one closes its connection."""
    pending_bytes: int = 4 * _MIB
    """Bytes queued per port (writes not yet written, events not yet sent) before the
    daemon applies backpressure; also the most ``high_water`` a client may ask for,
    and the output a session buffers for its client before it stops reading the
    client's requests."""
    max_elements: int = 100_000
    """Values (array items, map keys and values) one message may decode to, in total:
    a small message of empty arrays must not become gigabytes of Python objects."""
    max_depth: int = 64
    """Arrays and maps one message may nest (at most 500: msgpack packs no deeper)."""
    hello_timeout: float = 5.0
    """Seconds a TCP connection has to complete ``hello``; then it is closed."""
    unauthenticated: int = 64
    """TCP connections without a successful ``hello`` yet, at once; counted apart from
    ``sessions``, so they can never lock the owner's Unix-socket sessions out."""

    def __post_init__(self) -> None:
        _check_int("limits.sessions", self.sessions, 1)
        _check_int("limits.ports_per_session", self.ports_per_session, 1)
        _check_int("limits.max_frame_bytes", self.max_frame_bytes, 1)
        _check_int("limits.max_message_bytes", self.max_message_bytes, 1024)
        _check_int("limits.pending_bytes", self.pending_bytes, 1)
        _check_int("limits.max_elements", self.max_elements, 1)
        _check_int("limits.max_depth", self.max_depth, 1)
        if self.max_depth > MAX_DEPTH_LIMIT:
            raise _fail("limits.max_depth", f"an int from 1 to {MAX_DEPTH_LIMIT}", self.max_depth)
        object.__setattr__(
            self, "hello_timeout", _check_number("limits.hello_timeout", self.hello_timeout, 0)
        )
        _check_int("limits.unauthenticated", self.unauthenticated, 1)


@dataclass(frozen=True, slots=True)
class SpawnConfig:
    """``[spawn]``: which programs clients may run; empty means spawn is disabled.

    An entry without a "/" is a program name: it allows exactly that ``argv[0]``,
    found on the daemon's own PATH (never on the PATH in the client's ``env``).
    An entry with a "/" is an absolute path: it allows exactly that ``argv[0]``.
    A name never matches a path or the other way round.
    """

    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.allow, tuple):
            raise _fail("spawn.allow", "a list of program names or absolute paths", self.allow)
        for i, entry in enumerate(self.allow):
            if type(entry) is not str or not entry:
                raise _fail(f"spawn.allow[{i}]", "a program name or an absolute path", entry)
            if "/" in entry and not os.path.isabs(entry):
                raise _fail(f"spawn.allow[{i}]", "a program name or an absolute path", entry)

    @property
    def enabled(self) -> bool:
        """Whether any program may be spawned."""
        return bool(self.allow)

    def resolve(self, argv0: str) -> str | None:
        """The executable to run for ``argv0``, or None if it is not allowed.

        A name resolves on the daemon's PATH now; an allowed name that is not
        found raises FileNotFoundError (as spawning it would). Run the returned
        path, not ``argv0``: a client's ``env`` could otherwise choose another
        program through its own PATH.
        """
        if "/" in argv0:
            wanted = os.path.normpath(argv0)
            for entry in self.allow:
                if "/" in entry and os.path.normpath(entry) == wanted:
                    return wanted
            return None
        if argv0 not in self.allow:
            return None
        found = shutil.which(argv0)
        if found is None:
            raise FileNotFoundError(
                errno.ENOENT, "allowed program not found on the server's PATH", argv0
            )
        return os.path.abspath(found)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (``GET /metrics``, unauthenticated)."""

    listen: str = ""
    """"host:port" to serve metrics on (port 0: any free one); "" for none."""

    def __post_init__(self) -> None:
        _check_str("metrics.listen", self.listen)
        if self.listen:
            try:
                _parse_tcp(self.listen)
            except ValueError:
                raise _fail(
                    "metrics.listen", '"" (off) or "host:port" (e.g. "127.0.0.1:9464")', self.listen
                ) from None

    def address(self) -> tuple[str, int] | None:
        """``listen`` as ``(host, port)``, or None when metrics are off."""
        return _parse_tcp(self.listen) if self.listen else None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: one frozen dataclass per section."""

    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    spawn: SpawnConfig = field(default_factory=SpawnConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def with_server(self, **changes: Any) -> Config:
        """A copy with ``[server]`` keys changed (command-line overrides such as
        ``socket=`` or ``tcp=``), validated like a loaded file: ``tcp`` without a
        token still raises ConfigError. ``None`` values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        names = {f.name for f in fields(ServerConfig)}
        for key in changes:
            if key not in names:
                raise ConfigError(
                    f"server.{key}: unknown key (the keys of [server] are "
                    f"{', '.join(f.name for f in fields(ServerConfig))})"
                )
        if changes.get("token_file"):
            changes["token"] = read_token_file(changes["token_file"])
        return replace(self, server=replace(self.server, **changes))


_SECTIONS: Final[Mapping[str, type[Any]]] = {
    "server": ServerConfig,
    "limits": LimitsConfig,
    "spawn": SpawnConfig,
    "metrics": MetricsConfig,
}


def read_token_file(path: str, key: str = "server.token_file") -> str:
    """The token in ``path``: the file must be a regular file of mode 0600 or stricter.

    Raises :class:`ConfigError` naming ``key`` (the config key, or the command-line
    option such as ``--token-file``) if it is missing, unreadable, too loose, empty
    or not UTF-8 text. The command line's ``--token-file`` uses it too.
    """
    try:
        with open(os.path.expanduser(path), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{key}: {path!r} is not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"{key}: {path!r} is accessible by group or others (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
                )
            raw = f.read(64 * 1024 + 1)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {exc}") from None
    if len(raw) > 64 * 1024:
        raise ConfigError(f"{key}: {path!r} is over 64 KiB: not a token")
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path!r} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"{key}: {path!r} is empty")
    return token


def from_mapping(data: Mapping[str, Any]) -> Config:
    """Validate a parsed configuration (TOML's tables as dicts) and build the Config.

    Missing sections and keys take their defaults; unknown ones, wrong types and
    bad values raise :class:`ConfigError` naming the key. A ``server.token_file``
    is read here (paths as given, ``~`` expanded, relative to the current
    directory).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table of sections, got {data!r}")
    sections: dict[str, Any] = {}
    for name, table in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            known = ", ".join(f"[{s}]" for s in _SECTIONS)
            raise ConfigError(f"unknown section [{name}] (the sections are {known})")
        if not isinstance(table, Mapping):
            raise _fail(name, "a table", table)
        keys = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in keys:
                raise ConfigError(
                    f"{name}.{key}: unknown key (the keys of [{name}] are {', '.join(keys)})"
                )
            values[key] = value
        if name == "spawn" and "allow" in values:
            allow = values["allow"]
            if not isinstance(allow, list):
                raise _fail("spawn.allow", "a list of program names or absolute paths", allow)
            values["allow"] = tuple(allow)
        if name == "server" and values.get("token_file"):
            if type(values["token_file"]) is not str:
                raise _fail("server.token_file", "a string", values["token_file"])
            if values.get("token"):
                raise ConfigError(
                    "server.token and server.token_file are both set: keep one (token_file "
                    "is safer: the config file need not be secret)"
                )
            values["token"] = read_token_file(values["token_file"])
        sections[name] = cls(**values)
    return Config(**sections)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the TOML file at ``path``; None gives the defaults
    (``Config()``, the same as the shipped ``config/ioserver.toml``).

    Raises :class:`ConfigError` for a missing or unreadable file, invalid TOML
    (with its line and column) and any bad key or value, prefixed with the path.
    """
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: invalid TOML: {exc}") from None
    try:
        return from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None
