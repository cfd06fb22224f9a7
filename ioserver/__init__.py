"""ioserver: an Erlang-style I/O server for Python.

Channels and ``select`` for threads and coroutines; I/O ports whose events
arrive as ordinary channel messages.

What a program needs is importable from here: the server (``IOServer``,
``default``), channels and ``select``, ``Port`` and the messages ports
deliver, and the exceptions. The scheduler's parking primitives (``Task``,
``AsyncTask``, ``WakeupHandle``, ``current_task``) are internals of the
channel implementations; they live in ``ioserver.sched``.
"""

from ._core import NATIVE
from .channel import Channel, ChannelClosed, ChannelStatistics, Empty, Full
from .framing import FrameError
from .messages import (
    Accepted,
    Closed,
    Data,
    Datagram,
    Error,
    Exited,
    Message,
    Passive,
    Readable,
    Stderr,
    Tick,
    Writable,
)
from .port import Port, PortClosed
from .select import aselect, select
from .server import IOServer, default
from .wakeup import ServerStopped

__all__ = [
    "NATIVE",
    "Accepted",
    "Channel",
    "ChannelClosed",
    "ChannelStatistics",
    "Closed",
    "Data",
    "Datagram",
    "Empty",
    "Error",
    "Exited",
    "FrameError",
    "Full",
    "IOServer",
    "Message",
    "Passive",
    "Port",
    "PortClosed",
    "Readable",
    "ServerStopped",
    "Stderr",
    "Tick",
    "Writable",
    "aselect",
    "default",
    "select",
]

__version__ = "0.1.0"
