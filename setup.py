"""Build the optional native core (ioserver._native); everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no compiler, no Python
headers) the install goes on and ioserver runs its pure-Python core.
Environment knobs for developers and CI (scripts/test sets the first):
  IOSERVER_STRICT_BUILD=1   -Wall -Werror, and a failed build fails the install
  IOSERVER_SANITIZE=address,undefined   build with those sanitizers (scripts/sanitize)
"""

import os
from pathlib import Path

from setuptools import Extension, setup

strict = os.environ.get("IOSERVER_STRICT_BUILD") == "1"
sanitize = os.environ.get("IOSERVER_SANITIZE", "")
sources = sorted(str(p) for p in Path("ioserver/csrc").glob("*.c"))
compile_args = ["-O2", "-Wall", "-std=c11"]
link_args: list[str] = []
if strict:
    compile_args.append("-Werror")
if sanitize:
    compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-O1", "-g"]
    link_args.append(f"-fsanitize={sanitize}")

setup(
    ext_modules=[
        Extension(
            "ioserver._native",
            sources=sources,
            depends=[str(p) for p in Path("ioserver/csrc").glob("*.h")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            optional=not strict,
        )
    ]
)
