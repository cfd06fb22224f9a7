"""The options every port-opening call takes: their types, and their parsing.

The ``TypedDict``s below are the keyword parameters of the ``IOServer`` openers
(``**options: Unpack[ConnectOptions]``...), so a type checker reports a
misspelt option or a wrong type in the user's program; at run time
``take_options`` checks the same names and values in the caller's thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, TypedDict

from ..channel import Channel
from ..framing import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_FRAME_BYTES
from ..port import DEFAULT_HIGH_WATER, _check_active

__all__ = [
    "ConnectOptions",
    "FileOptions",
    "ListenOptions",
    "PortOptions",
    "SpawnOptions",
    "UDPOptions",
    "take_options",
]

#: ``packet=``: None (or "raw") delivers reads as they come; "line", 1/2/4 (a
#: big-endian length header) and "msgpack" deliver one frame per message.
Packet: TypeAlias = Literal["raw", "line", "msgpack", 1, 2, 4] | None
#: ``active=``: True, False (passive: ``read()``), "once", or N more messages.
Active: TypeAlias = bool | int | Literal["once"]


class ConnectOptions(TypedDict, total=False):
    """The options of every opener (``connect_tcp``, ``connect_unix``, ``interval``...)."""

    inbox: Channel[Any] | None  # deliver into this channel, shared, not an own inbox
    packet: Packet
    active: Active
    timeout: float | None  # for the open itself (connect, bind)
    high_water: int  # unsent bytes above which send blocks
    max_frame_bytes: int  # the largest frame accepted (and sent)
    max_elements: int  # packet="msgpack": values one frame may decode to
    max_depth: int  # packet="msgpack": nesting one frame may decode to


class ListenOptions(ConnectOptions, total=False):
    """``listen_tcp``/``listen_unix``: also where accepted ports deliver, and the backlog."""

    conn_inbox: Channel[Any] | None
    backlog: int


class UDPOptions(ConnectOptions, total=False):
    """``open_udp``: the default destination, socket options, errors kept."""

    remote_addr: tuple[str, int] | None
    reuse_port: bool
    allow_broadcast: bool
    max_pending: int


class SpawnOptions(ConnectOptions, total=False):
    """``spawn``: the child's directory, environment, stderr, and kill delay."""

    cwd: str | os.PathLike[str] | None
    env: Mapping[str, str] | None
    stderr: Literal["separate", "merge", "discard"]
    kill_timeout: float


class FileOptions(ConnectOptions, total=False):
    """``open_file``: the bytes per read."""

    chunk_size: int


class PortOptions:
    """The options shared by every kind of port, validated up front in the caller's thread."""

    __slots__ = (
        "active",
        "high_water",
        "inbox",
        "max_depth",
        "max_elements",
        "max_frame_bytes",
        "packet",
        "timeout",
    )

    def __init__(
        self,
        *,
        inbox: Channel[Any] | None = None,
        packet: str | int | None = None,
        active: bool | int | str = True,
        timeout: float | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if inbox is not None and not isinstance(inbox, Channel):
            raise TypeError(f"inbox must be a Channel, not {type(inbox).__name__}")
        _check_active(active)
        if packet not in (None, "raw", "line", 1, 2, 4, "msgpack"):
            raise ValueError(
                f"packet must be None, 'raw', 'line', 1, 2, 4 or 'msgpack', not {packet!r}"
            )
        if high_water <= 0:
            raise ValueError(f"high_water must be > 0, not {high_water!r}")
        self.inbox = inbox
        self.packet = packet
        self.active = active
        self.timeout = timeout
        self.high_water = high_water
        self.max_frame_bytes = max_frame_bytes
        # packet="msgpack" only: what one frame may decode to (framing.DecodeBudget).
        self.max_elements = max_elements
        self.max_depth = max_depth

    def driver_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Driver.__init__``."""
        return {
            "packet": self.packet,
            "active": self.active,
            "max_frame_bytes": self.max_frame_bytes,
            "max_elements": self.max_elements,
            "max_depth": self.max_depth,
        }


def take_options(options: Mapping[str, Any], *extra: str) -> tuple[PortOptions, dict[str, Any]]:
    """Split ``options`` into the common PortOptions and the kind's ``extra`` names.

    Unknown names raise TypeError naming them, as a misspelt keyword would.
    """
    options = dict(options)
    kind_specific = {k: options.pop(k) for k in list(options) if k in extra}
    try:
        common = PortOptions(**options)
    except TypeError as exc:
        allowed = sorted([*PortOptions.__slots__, *extra])
        raise TypeError(f"{exc}; the options here are {', '.join(allowed)}") from None
    return common, kind_specific
