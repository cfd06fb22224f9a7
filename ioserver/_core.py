"""Which core runs: the compiled ``ioserver._native`` or the pure-Python modules.

The native core is optional (built at install where a C compiler is present)
and implements the same contract as the pure-Python modules, which stay the
readable reference. ``IOSERVER_PURE=1`` in the environment forces pure Python.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["NATIVE", "native"]


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
