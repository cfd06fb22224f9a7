"""ioserver: an Erlang-style I/O server for Python.

Channels and ``select`` for threads and coroutines; I/O ports whose events
arrive as ordinary channel messages.
"""

from .channel import Channel, ChannelClosed, ChannelStatistics, Empty, Full
from .sched import AsyncTask, Task, WakeupHandle, current_task
from .select import aselect, select

__all__ = [
    "AsyncTask",
    "Channel",
    "ChannelClosed",
    "ChannelStatistics",
    "Empty",
    "Full",
    "Task",
    "WakeupHandle",
    "aselect",
    "current_task",
    "select",
]

__version__ = "0.1.0"
