"""The method table: parameter types, every method, client notification and
event with its params, result and errors; :func:`check_params` checks a request
against it and :func:`api_info` publishes it (``get_api_info``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .connection import _is_uint32, _method_name
from .errors import ERROR_CODES, INVALID_PARAMS, UNKNOWN_METHOD, RpcError, describe

PROTOCOL_VERSION: Final = 1
"""The version ``hello`` negotiates; bumped only for an incompatible change
(additions — methods, events, options, result keys — keep the version)."""


# --- parameter types ---------------------------------------------------------------------


class _Invalid(Exception):
    """Internal: a value failed its WireType; the text follows the param's name."""


@dataclass(frozen=True, slots=True)
class WireType:
    """The type of a param on the wire.

    ``name`` is how docs and ``get_api_info`` spell it ("str", "uint32",
    "[str, int]", "str|nil"); ``convert`` checks a decoded value and returns it
    normalized (a bin where a str is expected is decoded, a str where bytes are
    expected is encoded, an address becomes a tuple) or raises.
    """

    name: str
    convert: Callable[[Any], Any]
    options: Mapping[str, WireType] | None = None
    """For an options map: the keys it accepts and their types."""


def _must(expected: str, value: Any) -> _Invalid:
    return _Invalid(f" must be {expected}, got {describe(value)}")


def _int(value: Any) -> int:
    if type(value) is not int:
        raise _must("an int", value)
    return value


def _uint32(value: Any) -> int:
    if not _is_uint32(value):
        raise _must("a uint32", value)
    return int(value)


def _port_number(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= 65535:
        raise _must("an int in 0..65535", value)
    return value


def _int_min(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if type(value) is not int or value < minimum:
            raise _must(f"an int >= {minimum}", value)
        return value

    return convert


def _int_range(minimum: int, maximum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if type(value) is not int or not minimum <= value <= maximum:
            raise _must(f"an int in {minimum}..{maximum}", value)
        return value

    return convert


MAX_BACKLOG: Final = 65535
"""The largest ``backlog`` a listener takes (the kernel caps it lower anyway)."""
BACKLOG: Final = WireType("int", _int_range(1, MAX_BACKLOG))


def _seconds(*, positive: bool) -> Callable[[Any], float]:
    bound = "> 0" if positive else ">= 0"

    def convert(value: Any) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise _must(f"a number {bound}", value)
        if value < 0 or (positive and value == 0):
            raise _must(f"a number {bound}", value)
        return float(value)

    return convert


def _str(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
    raise _must("a str", value)


def _data(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is str:
        return value.encode("utf-8", "surrogateescape")
    raise _must("bin (or str, sent as UTF-8)", value)


def _any(value: Any) -> Any:
    return value


def _addr(value: Any) -> tuple[str, int]:
    if type(value) is not list or len(value) != 2:
        raise _must("an array [host, port]", value)
    try:
        return (_str(value[0]), _port_number(value[1]))
    except _Invalid:
        raise _must("an array [host: str, port: int in 0..65535]", value) from None


def _argv(value: Any) -> list[str]:
    if type(value) is not list or not value:
        raise _must("a non-empty array of str", value)
    try:
        return [_str(arg) for arg in value]
    except _Invalid:
        raise _must("a non-empty array of str", value) from None


def _env(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise _must("a map of str to str, or nil", value)
    try:
        return {_str(k): _str(v) for k, v in value.items()}
    except _Invalid:
        raise _must("a map of str to str, or nil", value) from None


def _one_of(*choices: Any) -> Callable[[Any], Any]:
    spelled = ", ".join("nil" if c is None else repr(c) for c in choices)

    def convert(value: Any) -> Any:
        given = _method_name(value) if type(value) is bytes else value  # a bin name
        for choice in choices:
            if type(given) is type(choice) and given == choice:
                return given
        raise _must(f"one of {spelled}", value)

    return convert


def _active(value: Any) -> bool | int | str:
    if value == b"once":
        return "once"
    if value is True or value is False or value == "once":
        return value  # type: ignore[no-any-return]
    if type(value) is int and -32768 <= value <= 32767:
        return value
    raise _must("true, false, 'once' or an int in -32768..32767", value)


def _nullable(t: WireType) -> WireType:
    def convert(value: Any) -> Any:
        return None if value is None else t.convert(value)

    return WireType(f"{t.name}|nil", convert)


INT = WireType("int", _int)
ID = WireType("id", _uint32)
"""A port or timer id (a uint32, unique within the session)."""
PORT_NUMBER = WireType("int", _port_number)
FLOAT = WireType("float", _seconds(positive=False))
POSITIVE_FLOAT = WireType("float", _seconds(positive=True))
STR = WireType("str", _str)
DATA = WireType("bin", _data)
ANY = WireType("any", _any)
ADDR = WireType("[str, int]", _addr)
ARGV = WireType("[str, ...]", _argv)

_PORT_OPTIONS: Final[Mapping[str, WireType]] = {
    "packet": WireType(
        "nil|'raw'|'line'|1|2|4|'msgpack'", _one_of(None, "raw", "line", 1, 2, 4, "msgpack")
    ),
    "active": WireType("bool|'once'|int", _active),
    "high_water": WireType("int", _int_min(1)),
    "max_frame_bytes": WireType("int", _int_min(1)),
}


def _options(**extra: WireType) -> WireType:
    """An options map: the port options plus ``extra``; missing or nil means ``{}``."""
    allowed: dict[str, WireType] = {**_PORT_OPTIONS, **extra}
    return _options_of(allowed)


def _options_of(allowed: Mapping[str, WireType]) -> WireType:
    names = ", ".join(sorted(allowed))

    def convert(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if type(value) is not dict:
            raise _must("a map of options", value)
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _method_name(key)
            t = allowed.get(name) if name is not None else None
            if t is None or name is None:
                what = repr(name) if name is not None else describe(key)
                raise _Invalid(f": unknown option {what} (the options here: {names})")
            try:
                out[name] = t.convert(item)
            except _Invalid as exc:
                raise _Invalid(f".{name}{exc}") from None
        return out

    return WireType("map", convert, allowed)


# --- the method table --------------------------------------------------------------------

_REQUIRED: Final[Any] = object()


@dataclass(frozen=True, slots=True)
class Param:
    """One positional param: its name, type, and default (when it may be left out)."""

    name: str
    type: WireType
    default: Any = _REQUIRED
    """The value used when the param is missing; ``{}`` defaults are copied per call."""

    @property
    def optional(self) -> bool:
        """Whether the param may be left out (then ``default`` is used)."""
        return self.default is not _REQUIRED


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """A method, client notification or event: its params, result and meaning."""

    name: str
    params: tuple[Param, ...]
    result: str = "nil"
    """The result's type, as docs spell it (meaningless for notifications and events)."""
    doc: str = ""
    errors: tuple[str, ...] = field(default=())
    """Names of the error codes a call may get besides INVALID_PARAMS."""

    def check(self, params: list[Any]) -> list[Any]:
        """``params`` checked and normalized, missing optional ones filled in; raises
        :class:`RpcError` INVALID_PARAMS naming the param and what was expected."""
        n = len(params)
        specs = self.params
        if n > len(specs) or n < sum(1 for p in specs if not p.optional):
            required = sum(1 for p in specs if not p.optional)
            count = str(len(specs)) if required == len(specs) else f"{required} to {len(specs)}"
            names = ", ".join(p.name for p in specs)
            raise RpcError(
                INVALID_PARAMS,
                f"{self.name} takes {count} params ({names}), got {n}",
                {"type": "TypeError"},
            )
        out: list[Any] = []
        for i, p in enumerate(specs):
            if i < n:
                try:
                    out.append(p.type.convert(params[i]))
                except _Invalid as exc:
                    raise RpcError(
                        INVALID_PARAMS, f"{self.name}: {p.name}{exc}", {"type": "ValueError"}
                    ) from None
            elif type(p.default) is dict:
                out.append({})
            else:
                out.append(p.default)
        return out

    def describe(self) -> dict[str, Any]:
        """This spec as ``get_api_info`` publishes it (msgpack-able)."""
        entry: dict[str, Any] = {
            "params": [
                {"name": p.name, "type": p.type.name, "optional": p.optional} for p in self.params
            ],
            "result": self.result,
            "doc": self.doc,
        }
        options = {
            p.name: {k: t.name for k, t in p.type.options.items()}
            for p in self.params
            if p.type.options is not None
        }
        if options:
            entry["options"] = options
        if self.errors:
            entry["errors"] = list(self.errors)
        return entry


def _spec(
    name: str, *params: Param, result: str = "nil", doc: str = "", errors: tuple[str, ...] = ()
) -> tuple[str, MethodSpec]:
    return name, MethodSpec(name, params, result, doc, errors)


_OPEN_ERRORS: Final = ("LIMIT", "OS_ERROR")
_PORT_ERRORS: Final = ("NO_SUCH_PORT",)

METHODS: Final[Mapping[str, MethodSpec]] = dict(
    [
        _spec(
            "hello",
            Param("version", INT),
            Param("token", _nullable(STR), None),
            result="{version: int, server: str, session_id: int}",
            doc="Handshake: optional first call over the Unix socket, required first over "
            "TCP (with the token). Answers the version spoken.",
            errors=("PROTOCOL_VERSION", "NOT_ALLOWED"),
        ),
        _spec("ping", result="'pong'", doc="Liveness check."),
        _spec("stats", result="map", doc="Counters of the server and of this session."),
        _spec(
            "reload",
            result="{changed: [str], restart_needed: [str]}",
            doc="Re-read the daemon's configuration file, as SIGHUP does (the Unix socket "
            "only). Answers the keys changed and those that need a restart; a bad file "
            "is error 8 (details.type 'ConfigError') and the running configuration stays.",
            errors=("NOT_ALLOWED", "SERVER_ERROR"),
        ),
        _spec(
            "get_api_info",
            result="{version, methods, notifications, events, error_codes}",
            doc="This table: methods, client notifications, events and error codes.",
        ),
        _spec(
            "connect_tcp",
            Param("host", STR),
            Param("port", PORT_NUMBER),
            Param("opts", _options(timeout=_nullable(POSITIVE_FLOAT)), {}),
            result="id",
            doc="Connect to host:port; answers once connected.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "listen_tcp",
            Param("host", STR),
            Param("port", PORT_NUMBER),
            Param("opts", _options(backlog=BACKLOG), {}),
            result="[id, [host, port]]",
            doc="Listen on host:port (0: any free port); answers the bound address. "
            "Connections arrive as 'accepted' events.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "connect_unix",
            Param("path", STR),
            Param("opts", _options(timeout=_nullable(POSITIVE_FLOAT)), {}),
            result="id",
            doc="Connect to the Unix socket at path.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "listen_unix",
            Param("path", STR),
            Param("opts", _options(backlog=BACKLOG), {}),
            result="id",
            doc="Listen on a Unix socket at path.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "open_udp",
            Param("host", STR),
            Param("port", PORT_NUMBER),
            Param("opts", _options(remote_addr=_nullable(ADDR)), {}),
            result="[id, [host, port]]",
            doc="A UDP socket bound to host:port; answers the bound address. Datagrams "
            "arrive as 'datagram' events; send with send_to (or send with remote_addr).",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "spawn",
            Param("argv", ARGV),
            Param(
                "opts",
                _options(
                    cwd=_nullable(STR),
                    env=WireType("map|nil", _env),
                    env_add=WireType("map|nil", _env),
                    stderr=WireType("nil|'merge'|'discard'", _one_of(None, "merge", "discard")),
                ),
                {},
            ),
            result="[id, pid]",
            doc="Run a program from the server's allow-list (no shell). 'send' writes its "
            "stdin; stdout arrives as 'data', stderr as 'stderr', then 'exited', 'closed'.",
            errors=("NOT_ALLOWED", *_OPEN_ERRORS),
        ),
        _spec(
            "send_after",
            Param("delay", FLOAT),
            Param("message", ANY),
            result="id",
            doc="After delay seconds, the event 'timer' [id, message].",
            errors=("LIMIT",),
        ),
        _spec(
            "cancel_timer",
            Param("timer_id", ID),
            result="bool",
            doc="Cancel a send_after timer: true if it had not fired yet.",
        ),
        _spec(
            "interval",
            Param("period", POSITIVE_FLOAT),
            Param("opts", _options(), {}),
            result="id",
            doc="A port that sends 'tick' [id, count] every period seconds.",
            errors=("LIMIT",),
        ),
        _spec(
            "open_file",
            Param("path", STR),
            Param("mode", STR, "rb"),
            Param("opts", _options(), {}),
            result="id",
            doc="A regular file: reads arrive as 'data' then 'closed' at EOF; 'send' writes.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "setopts",
            Param("port_id", ID),
            Param("opts", _options_of({"active": _PORT_OPTIONS["active"]})),
            doc="Change a port's active mode (an int is added to its counter).",
            errors=_PORT_ERRORS,
        ),
        _spec(
            "read",
            Param("port_id", ID),
            doc="In passive mode: ask for one more message; it arrives as an event.",
            errors=_PORT_ERRORS,
        ),
        _spec(
            "close",
            Param("port_id", ID),
            doc="Close a port; its 'closed' event follows, after any data.",
            errors=_PORT_ERRORS,
        ),
        _spec(
            "close_stdin",
            Param("port_id", ID),
            doc="Half-close the write side (a process's stdin, a socket's write side).",
            errors=_PORT_ERRORS,
        ),
    ]
)
"""Requests the server answers: name -> spec."""

NOTIFICATIONS: Final[Mapping[str, MethodSpec]] = dict(
    [
        _spec(
            "send",
            Param("port_id", ID),
            Param("data", DATA),
            doc="Write data to a port (no reply; a failure comes back as an 'error' event).",
        ),
        _spec(
            "send_to",
            Param("port_id", ID),
            Param("data", DATA),
            Param("addr", ADDR),
            doc="Send one datagram to addr from a UDP port.",
        ),
    ]
)
"""Notifications the server acts on (client -> server); others are ignored."""

_ERR = WireType("[code, message, details?]", _any)

EVENTS: Final[Mapping[str, MethodSpec]] = dict(
    [
        _spec("data", Param("port_id", ID), Param("data", ANY), doc="Bytes (a frame) read."),
        _spec("stderr", Param("port_id", ID), Param("data", DATA), doc="A process's stderr."),
        _spec(
            "closed",
            Param("port_id", ID),
            Param("reason", _nullable(STR), None),
            doc="The port is closed: exactly once, last.",
        ),
        _spec(
            "error",
            Param("port_id", _nullable(ID)),
            Param("error", _ERR),
            doc="The port failed ('closed' follows); port_id nil: a session-level error.",
        ),
        _spec(
            "accepted",
            Param("port_id", ID),
            Param("new_port_id", ID),
            Param("peer", ANY, None),
            doc="A listener accepted a connection: a new port, and its peer address.",
        ),
        _spec(
            "datagram",
            Param("port_id", ID),
            Param("data", DATA),
            Param("addr", ADDR),
            doc="One UDP datagram and its sender.",
        ),
        _spec("exited", Param("port_id", ID), Param("returncode", INT), doc="A process ended."),
        _spec("tick", Param("port_id", ID), Param("count", INT), doc="An interval fired."),
        _spec("passive", Param("port_id", ID), doc="The active count ran out; reading is paused."),
        _spec("timer", Param("timer_id", ID), Param("message", ANY), doc="A send_after fired."),
    ]
)
"""Notifications the server sends (server -> client), port (or timer) id first."""


def check_params(method: str, params: list[Any]) -> list[Any]:
    """Check a request against :data:`METHODS`: the params normalized, optional
    ones filled in. Raises :class:`RpcError` UNKNOWN_METHOD or INVALID_PARAMS."""
    spec = METHODS.get(method)
    if spec is None:
        raise RpcError(UNKNOWN_METHOD, f"unknown method {method!r}")
    return spec.check(params)


def api_info() -> dict[str, Any]:
    """The result of ``get_api_info``: version, methods, notifications, events, error codes."""
    return {
        "version": PROTOCOL_VERSION,
        "methods": {name: spec.describe() for name, spec in METHODS.items()},
        "notifications": {name: spec.describe() for name, spec in NOTIFICATIONS.items()},
        "events": {name: spec.describe() for name, spec in EVENTS.items()},
        "error_codes": dict(ERROR_CODES),
    }
