"""The messages ports deliver: frozen dataclasses, every one with ``.port`` first.

Use them with ``match``::

    match msg:
        case Data(port=p, data=d): ...
        case Closed(): ...

A port delivers, in order: any number of data-like messages (``Data``,
``Datagram``, ``Accepted``, ``Tick``, ``Readable``/``Writable``), at most one
``Error`` per failure, and exactly one ``Closed``, always last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ._core import native

__all__ = [
    "Accepted",
    "Closed",
    "Data",
    "Datagram",
    "Error",
    "Exited",
    "Message",
    "Passive",
    "Readable",
    "Stderr",
    "Tick",
    "Writable",
]


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every port message; ``port`` is the port it came from."""

    port: Any


@dataclass(frozen=True, slots=True)
class Data(Message):
    """Bytes (or, with ``packet="msgpack"``, a decoded object) read from the port."""

    data: Any


@dataclass(frozen=True, slots=True)
class Stderr(Message):
    """Bytes a spawned process wrote to its stderr (kept apart from ``Data``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Closed(Message):
    """The port is closed; delivered exactly once, after everything else.

    ``reason`` is None for an orderly close (ours or the peer's EOF), else a
    short string ("reset", "error", "server stopped", ...).
    """

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Error(Message):
    """The port failed; ``error`` is the exception. A ``Closed`` follows, except for
    UDP's per-datagram errors (an ICMP error, a rejected send): that port stays open."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Accepted(Message):
    """A listening port accepted a connection; ``conn`` is its new Port."""

    conn: Any


@dataclass(frozen=True, slots=True)
class Datagram(Message):
    """One UDP datagram and the address it came from."""

    data: bytes
    addr: Any


@dataclass(frozen=True, slots=True)
class Exited(Message):
    """A spawned process ended; negative ``returncode`` means killed by that signal."""

    returncode: int


@dataclass(frozen=True, slots=True)
class Tick(Message):
    """An interval timer fired; ``count`` starts at 1."""

    count: int


@dataclass(frozen=True, slots=True)
class Readable(Message):
    """A watched fd is readable."""

    fd: int


@dataclass(frozen=True, slots=True)
class Writable(Message):
    """A watched fd is writable."""

    fd: int


@dataclass(frozen=True, slots=True)
class Passive(Message):
    """An ``active=N`` count ran out; the port reads no more until ``setopts(active=...)``."""


M = TypeVar("M", bound=Message)


def _maker(cls: type[M]) -> Callable[..., M]:
    """The drivers' constructor of ``cls`` from positional field values.

    The native core fills the slots directly (``_native.message_maker``): a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    about 0.4 µs per message on every message a port delivers. The object is the
    same as ``cls(...)`` gives. The pure core calls the class."""
    if native is None:
        return cls
    return native.message_maker(cls, tuple(f.name for f in fields(cls)))  # type: ignore[no-any-return]


make_data = _maker(Data)
make_datagram = _maker(Datagram)
make_tick = _maker(Tick)
