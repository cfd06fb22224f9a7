"""Port messages <-> event notifications: :func:`event_to_wire` (the daemon side)
and :func:`wire_to_event` (the client side), and :class:`TimerFired`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from ..messages import (
    Accepted,
    Closed,
    Data,
    Datagram,
    Error,
    Exited,
    Message,
    Passive,
    Stderr,
    Tick,
)
from .errors import (
    INVALID_PARAMS,
    PORT_ERROR,
    ProtocolError,
    RpcError,
    exception_to_wire,
    wire_to_exception,
)
from .schema import EVENTS

# --- port messages <-> events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimerFired(Message):
    """A ``send_after`` timer fired: ``port`` is the timer (as the session or client
    names it), ``message`` the value given to ``send_after``. The wire event ``timer``."""

    message: Any


def _wire_addr(addr: Any) -> Any:
    """An address as sent: [host, port] for an IP address (IPv6's flow info and
    scope dropped), a str for a Unix socket path, nil if unknown."""
    if isinstance(addr, list | tuple) and len(addr) >= 2:
        return [addr[0], addr[1]]
    if isinstance(addr, bytes):
        return addr.decode("utf-8", "surrogateescape")
    return addr


IdOf: TypeAlias = Callable[[Any], int]

_TO_WIRE: Final[dict[type, Callable[[Any, IdOf], tuple[str, list[Any]]]]] = {
    Data: lambda m, id_of: ("data", [id_of(m.port), m.data]),
    Stderr: lambda m, id_of: ("stderr", [id_of(m.port), m.data]),
    Closed: lambda m, id_of: ("closed", [id_of(m.port), m.reason]),
    Error: lambda m, id_of: (
        "error",
        [
            None if m.port is None else id_of(m.port),
            exception_to_wire(
                m.error, None if isinstance(m.error, OSError | RpcError) else PORT_ERROR
            ),
        ],
    ),
    Accepted: lambda m, id_of: (
        "accepted",
        [id_of(m.port), id_of(m.conn), _wire_addr(getattr(m.conn, "peer", None))],
    ),
    Datagram: lambda m, id_of: ("datagram", [id_of(m.port), m.data, _wire_addr(m.addr)]),
    Exited: lambda m, id_of: ("exited", [id_of(m.port), m.returncode]),
    Tick: lambda m, id_of: ("tick", [id_of(m.port), m.count]),
    Passive: lambda m, id_of: ("passive", [id_of(m.port)]),
    TimerFired: lambda m, id_of: ("timer", [id_of(m.port), m.message]),
}


def event_to_wire(message: Message, port_id_of: IdOf) -> tuple[str, list[Any]]:
    """A port message as an event notification ``(name, params)``.

    ``port_id_of`` maps a port (or timer) object to its session id; it is also
    applied to an ``Accepted``'s new port (``conn``, whose ``.peer`` is sent).
    An ``Error`` with ``port`` None is a session-level error (port id nil). A
    message with no wire form (``Readable``/``Writable``: watch is local-only)
    raises ValueError.
    """
    to_wire = _TO_WIRE.get(type(message))
    if to_wire is None:
        raise ValueError(f"{type(message).__name__} has no wire event")
    return to_wire(message, port_id_of)


def wire_to_event(
    name: str,
    params: list[Any],
    port_of: Callable[[int], Any],
    *,
    accept: Callable[[Any, int, Any], Any] | None = None,
    error_types: Mapping[str, type[BaseException]] | None = None,
) -> Message | None:
    """An event notification as the port message it stands for (the client side of
    :func:`event_to_wire`); None for a name that is not an event (ignore it:
    a newer server may send more).

    ``port_of(id)`` gives the object for a port or timer id. ``accept(listener,
    new_id, peer)`` makes the new port of an ``accepted`` event (default:
    ``port_of(new_id)``). ``error_types`` goes to :func:`wire_to_exception`. A
    known event with bad params raises a non-fatal :class:`ProtocolError`.
    """
    spec = EVENTS.get(name)
    if spec is None:
        return None
    try:
        p = spec.check(params)
    except RpcError as exc:
        raise ProtocolError(INVALID_PARAMS, f"bad event: {exc.message}") from None
    if name == "error":
        port = None if p[0] is None else port_of(p[0])
        return Error(port, wire_to_exception(p[1], error_types))
    port = port_of(p[0])
    if name == "data":
        return Data(port, p[1])
    if name == "stderr":
        return Stderr(port, p[1])
    if name == "closed":
        return Closed(port, p[1])
    if name == "accepted":
        peer = tuple(p[2]) if isinstance(p[2], list) else p[2]
        conn = accept(port, p[1], peer) if accept is not None else port_of(p[1])
        return Accepted(port, conn)
    if name == "datagram":
        return Datagram(port, p[1], p[2])
    if name == "exited":
        return Exited(port, p[1])
    if name == "tick":
        return Tick(port, p[1])
    if name == "passive":
        return Passive(port)
    assert name == "timer", name
    return TimerFired(port, p[1])
