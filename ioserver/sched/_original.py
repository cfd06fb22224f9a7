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

__all__ = ["allocate_lock", "get_ident", "local", "original", "sleep", "start_new_thread"]


def original(module: str, name: str) -> Any:
    """``module.name`` as it was before any gevent monkey-patching."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


allocate_lock = original("_thread", "allocate_lock")
get_ident = original("_thread", "get_ident")
start_new_thread = original("_thread", "start_new_thread")
local = original("_thread", "_local")
sleep = original("time", "sleep")
