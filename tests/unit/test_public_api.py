"""What ``import ioserver`` offers: what a program needs, and no scheduler internals.

A newcomer writes ``from ioserver import Port, Closed, ...`` (issue 10): every
name a program touches is at the top, each the very object of the module that
defines it, while the parking primitives stay in ``ioserver.sched``.
"""

from __future__ import annotations

import importlib

import ioserver
from ioserver import channel, framing, messages, port, sched, server, wakeup

# ``ioserver.select`` is the function (the module's name is taken by it).
select_module = importlib.import_module("ioserver.select")

#: The names a program needs, and the module each one is defined in.
PUBLIC = {
    "IOServer": server,
    "default": server,
    "ServerStopped": wakeup,
    "Channel": channel,
    "ChannelClosed": channel,
    "ChannelStatistics": channel,
    "Empty": channel,
    "Full": channel,
    "select": select_module,
    "aselect": select_module,
    "Port": port,
    "PortClosed": port,
    "FrameError": framing,
    **{name: messages for name in messages.__all__},
}


def test_every_public_name_is_at_the_top_and_is_the_defining_modules_object() -> None:
    for name, module in PUBLIC.items():
        assert name in ioserver.__all__, name
        assert getattr(ioserver, name) is getattr(module, name), name
    for name in ("Data", "Closed", "Accepted", "Error", "Exited", "Datagram", "Tick"):
        assert name in ioserver.__all__, name
    for name in ("Readable", "Writable", "Passive", "Stderr"):
        assert name in ioserver.__all__, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from ioserver import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(ioserver.__all__)
    assert set(ioserver.__all__) == set(PUBLIC) | {"NATIVE"}


def test_scheduler_internals_live_in_sched_only() -> None:
    for name in ("Task", "AsyncTask", "WakeupHandle", "current_task"):
        assert name not in ioserver.__all__, name
        assert not hasattr(ioserver, name), name
        assert hasattr(sched, name), name
