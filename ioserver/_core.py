"""Which core runs: the compiled ``ioserver._native`` or the pure-Python modules.

The native core is optional (built at install where a C compiler is present)
and implements the same contract as the pure-Python modules, which stay the
readable reference. ``IOSERVER_PURE=1`` in the environment forces pure Python.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

__all__ = ["NATIVE", "fast_constructor", "native"]

C = TypeVar("C")


def _load() -> ModuleType | None:
    if os.environ.get("IOSERVER_PURE", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module("ioserver._native")
    except ImportError:
        return None


#: The compiled module, or None when the pure-Python core runs.
native: ModuleType | None = _load()
#: Whether the native core is in use.
NATIVE: bool = native is not None


def fast_constructor(cls: type[C]) -> Callable[..., C]:
    """A constructor of the frozen slots dataclass ``cls`` from positional field values,
    for a hot path: the native core fills the slots directly (``message_maker``,
    csrc/messages.c) instead of the generated ``__init__``, which sets each field
    through ``object.__setattr__`` (about 0.4 µs a field); the object is the same.
    The pure core returns the class."""
    if native is None:
        return cls
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return native.message_maker(cls, names)  # type: ignore[no-any-return]
