"""Which task is running: the two questions a blocking call and an ``await`` ask.

A blocking call (``recv``, ``send``, ``select``, ``IOServer.call``) asks "a
native thread or a gevent greenlet?"; an ``await`` asks "asyncio or trio?". A
single answer cannot serve both (a trio program may make a blocking call in a
worker thread; a greenlet may run an asyncio loop), so they are kept apart:
:func:`current_task` and :func:`current_async_task`.

Each looks only at libraries already imported (``sys.modules``): a program
that never imports gevent or trio pays one dict lookup (sniffio alone, which
other libraries import too, is not asked). A scoped override
(:func:`using_task`) comes first; the count of live overrides keeps the
thread-local lookup off the common path. The kinds themselves live in
``sched/gevent.py`` and ``sched/trio.py``, imported only once their library is.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .._core import native
from ._handles import _THREAD_TASK, AsyncTask, AsyncTaskLike, TaskLike
from ._original import local

__all__ = [
    "current_async_task",
    "current_task",
    "foreign_async_task",
    "green_task",
    "thread_task",
    "using_task",
    "yield_now",
]

_modules = sys.modules
_scoped = local()  # .sync / .aio: the innermost using_task() of this thread
_overrides = 0  # live using_task() scopes, all threads


def green_task() -> TaskLike | None:
    """The task for a blocking call when it is not a plain native thread: a
    :func:`using_task` override or a gevent greenlet; None for a native thread.
    Cheap when neither gevent is imported nor an override is active."""
    if _overrides:
        task = getattr(_scoped, "sync", None)
        if task is not None:
            return task  # type: ignore[no-any-return]
    if "gevent" in _modules:
        from .gevent import current_greenlet_task

        return current_greenlet_task()
    return None


def current_task() -> TaskLike:
    """The task of a blocking call made here: the innermost :func:`using_task`,
    else the gevent greenlet (when gevent is imported and this thread has a
    hub; a hub is never created), else this native thread."""
    task = green_task()
    return _THREAD_TASK if task is None else task


def foreign_async_task() -> AsyncTaskLike | None:
    """The task for an ``await`` when it is not an asyncio task: a
    :func:`using_task` override or a trio task; None for asyncio."""
    if _overrides:
        task = getattr(_scoped, "aio", None)
        if task is not None:
            return task  # type: ignore[no-any-return]
    if "trio" in _modules:
        sniffio = _modules["sniffio"]  # trio imports it
        # trio sets the thread-local name for its whole run; trio-asyncio
        # switches it to "asyncio" around asyncio callbacks (so checking
        # asyncio's running loop first would pick the wrong kind there).
        name = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
        if name == "trio":
            return _trio_task or _import_trio_task()
    return None


_trio_task: AsyncTaskLike | None = None  # sched/trio.py's task, once imported


def _import_trio_task() -> AsyncTaskLike:
    """The trio task kind, imported on first use (an import statement per
    ``await`` would cost a microsecond)."""
    global _trio_task
    from .trio import current_trio_task

    _trio_task = current_trio_task()
    return _trio_task


def current_async_task() -> AsyncTaskLike:
    """The task of an ``await`` made here: the innermost :func:`using_task`,
    else a trio task (sniffio says "trio"), else the running asyncio task.
    Raises RuntimeError outside any of them."""
    task = foreign_async_task()
    if task is not None:
        return task
    return AsyncTask(asyncio.get_running_loop())


@contextmanager
def using_task(task: TaskLike | AsyncTaskLike) -> Iterator[None]:
    """Make ``task`` the current one for this thread inside the ``with`` block.

    A task with a synchronous ``block_after`` serves blocking calls
    (:func:`current_task`), one with a coroutine ``block_after`` serves awaits
    (:func:`current_async_task`). Scopes nest; each exit restores what was
    current before. How a third-party scheduler plugs in: its task parks in
    ``block_after`` and its handles keep the contract of
    :meth:`PyWakeupHandle.unpark`.
    """
    global _overrides

    slot = "aio" if inspect.iscoroutinefunction(task.block_after) else "sync"
    before = getattr(_scoped, slot, None)
    setattr(_scoped, slot, task)
    _overrides += 1
    if native is not None:
        native._green_scope(1)  # the native slow paths ask Python while scopes live
    try:
        yield
    finally:
        _overrides -= 1
        if native is not None:
            native._green_scope(-1)
        setattr(_scoped, slot, before)


def yield_now() -> None:
    """Let the other tasks of the current scheduler run once: ``gevent.sleep(0)``
    in a greenlet, the rest of the time slice in a thread. (An ``await`` task
    yields with ``await current_async_task().yield_now()``.)"""
    current_task().yield_now()


@contextmanager
def thread_task(task: TaskLike) -> Iterator[None]:
    """Make ``task`` the blocking task of this whole thread while the block runs,
    at the cost of this thread only (the native core asks Python first in this
    thread alone, not in every thread as for :func:`using_task`). The I/O thread
    uses it to refuse blocking calls."""
    global _overrides
    before = getattr(_scoped, "sync", None)
    _scoped.sync = task
    _overrides += 1
    if native is not None:
        native._thread_scope(True)
    try:
        yield
    finally:
        _overrides -= 1
        if native is not None:
            native._thread_scope(False)
        _scoped.sync = before
