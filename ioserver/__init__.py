"""ioserver: an Erlang-style I/O server for Python.

Channels and ``select`` for threads and coroutines; I/O ports whose events
arrive as ordinary channel messages.
"""

from ._core import NATIVE
from .channel import Channel, ChannelClosed, ChannelStatistics, Empty, Full
from .sched import AsyncTask, Task, WakeupHandle, current_task
from .select import aselect, select
from .server import IOServer, default
from .wakeup import ServerStopped

__all__ = [
    "NATIVE",
    "AsyncTask",
    "Channel",
    "ChannelClosed",
    "ChannelStatistics",
    "Empty",
    "Full",
    "IOServer",
    "ServerStopped",
    "Task",
    "WakeupHandle",
    "aselect",
    "current_task",
    "default",
    "select",
]

__version__ = "0.1.0"
