"""The thread primitives as the interpreter made them, even under gevent's monkey-patching.

``gevent.monkey.patch_all()`` replaces ``_thread.allocate_lock``,
``_thread.get_ident``, ``_thread.start_new_thread``, ``threading.local`` and
``time.sleep`` with greenlet-aware versions. Whichever of them a module
imported first (before or after the patching) it keeps, so ioserver would
get a different lock depending on import order. The house needs the
originals everywhere: a claim lock that never switches greenlets (a patched
lock's failed ``acquire(False)`` calls ``gevent.sleep()``, which creates a hub
in a plain thread), a thread identity that is the OS thread's (patched, it is
the greenlet's), an I/O thread that is a real thread, and a spin that yields
the GIL rather than the greenlet. ``gevent.monkey.get_original`` returns the
saved original when gevent has patched; otherwise the module attribute is the
original already.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = [
    "Flag",
    "allocate_lock",
    "get_ident",
    "local",
    "original",
    "sleep",
    "start_new_thread",
    "threading_patched",
]


def original(module: str, name: str) -> Any:
    """``module.name`` as it was before any gevent monkey-patching."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


def threading_patched() -> bool:
    """Whether gevent's monkey-patching made ``threading.Thread`` start greenlets
    (then a thread that must be an OS thread starts with :data:`start_new_thread`)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


allocate_lock = original("_thread", "allocate_lock")
get_ident = original("_thread", "get_ident")
start_new_thread = original("_thread", "start_new_thread")
local = original("_thread", "_local")
sleep = original("time", "sleep")


class Flag:
    """``threading.Event``'s set/is_set/wait, made of an original lock: it stays an
    OS-level event under gevent's patching (a patched Event set from another OS
    thread cannot wake a hub that has nothing else to watch: ``LoopExit``)."""

    __slots__ = ("_guard", "_lock", "_set")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()  # held until set()
        self._guard = allocate_lock()
        self._set = False

    def set(self) -> None:
        with self._guard:
            if not self._set:
                self._set = True
                self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set (True) or ``timeout`` passes (the flag's state then)."""
        if self._set:
            return True
        if self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            self._lock.release()  # leave it released for every other waiter
            return True
        return self._set
