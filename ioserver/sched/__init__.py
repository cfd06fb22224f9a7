"""Tasks: the one primitive that parks, for every kind of task on the same channels.

A blocking operation calls ``task.block_after(f, timeout)``: ``f`` stores a
fresh :class:`WakeupHandle` where a waker will find it, and the task parks
until the waker that wins the handle's claim unparks it. Which task parks
depends on who calls (:func:`current_task` for blocking calls,
:func:`current_async_task` for awaits):

* ``_handles``: the handle contract (claim, ``unpark`` that never blocks,
  switches or raises, and returns False when the sleeper's scheduler is gone),
  native threads (:class:`Task`) and asyncio tasks (:class:`AsyncTask`);
* ``gevent``: greenlets (``GeventTask``), imported once gevent is;
* ``trio``: trio tasks (``TrioTask``), imported once trio runs;
* ``_current``: which of them is running, and :func:`using_task`, the scoped
  override through which a third-party scheduler plugs in;
* ``_blocking``: :func:`run_blocking`, a blocking call awaited from any await
  task kind without blocking its loop (the awaitable openers);
* ``_original``: the thread primitives as they were before gevent's
  monkey-patching (the claim lock stays native).

See docs/architecture.md ("Task kinds").
"""

from ._blocking import run_blocking
from ._current import (
    current_async_task,
    current_task,
    foreign_async_task,
    green_task,
    thread_task,
    using_task,
    yield_now,
)
from ._handles import (
    AsyncTask,
    AsyncTaskLike,
    AsyncWakeup,
    MainThreadWakeup,
    PyThreadWakeup,
    PyWakeupHandle,
    Task,
    TaskLike,
    ThreadTask,
    ThreadWakeup,
    WakeupHandle,
    WokenThenCancelled,
    shielded,
    thread_wakeup,
)

__all__ = [
    "AsyncTask",
    "AsyncTaskLike",
    "AsyncWakeup",
    "MainThreadWakeup",
    "PyThreadWakeup",
    "PyWakeupHandle",
    "Task",
    "TaskLike",
    "ThreadTask",
    "ThreadWakeup",
    "WakeupHandle",
    "WokenThenCancelled",
    "current_async_task",
    "current_task",
    "foreign_async_task",
    "green_task",
    "run_blocking",
    "shielded",
    "thread_task",
    "thread_wakeup",
    "using_task",
    "yield_now",
]
