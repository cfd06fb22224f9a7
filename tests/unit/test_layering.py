"""The house's layering: a module imports only what stands above it in DESIGN.md's list.

Imports inside functions count too (a lazy import is still a dependency), except
IOServer's port factories, which by design reach down into ``drivers`` (the one
place the server dispatches to the drivers below it is listed in ALLOWED).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# DESIGN.md "The house", top to bottom; client/ stands below everything.
ORDER = [
    "ioserver._core",  # which core runs (the native one is ioserver._native)
    "ioserver._native",
    "ioserver.sched",
    "ioserver.channel",
    "ioserver.select",
    "ioserver.messages",
    "ioserver.framing",
    "ioserver.wakeup",
    "ioserver.port",
    "ioserver.drivers",
    "ioserver.server",
    "ioserver.config",
    "ioserver.protocol",
    "ioserver.daemon",
    "ioserver.cli",
    "client",
]


# The package root re-exports the embedded API: importing it costs what it imports.
ROOT_IMPORTS_DOWN_TO = "ioserver.server"


def layer(module: str) -> int:
    if module == "ioserver" or module.startswith("ioserver.__"):
        return ORDER.index(ROOT_IMPORTS_DOWN_TO)
    for rank, name in enumerate(ORDER):
        if module == name or module.startswith(name + "."):
            return rank
    raise AssertionError(f"{module} is not in DESIGN's list")


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted([*ROOT.glob("ioserver/**/*.py"), *ROOT.glob("client/**/*.py")]):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("__init__", "__main__"):
            continue  # the package surface re-exports everything below it
        found.append((".".join(parts), path))
    return found


def imports_of(name: str, path: Path) -> set[str]:
    package = name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                if node.module is None:
                    out.update(f"{target}.{alias.name}" for alias in node.names)
                else:
                    out.add(target)
            elif node.module:
                out.add(node.module)
    return {m for m in out if m.split(".")[0] in ("ioserver", "client")}


# (importer, imported): downward dispatch the design calls for.
ALLOWED = {("ioserver.server", "ioserver.drivers")}


def test_every_module_is_placed() -> None:
    for name, _ in modules():
        layer(name)


def test_no_module_imports_upward() -> None:
    upward = []
    for name, path in modules():
        for imported in imports_of(name, path):
            if layer(imported) > layer(name) and not any(
                name.startswith(a) and imported.startswith(b) for a, b in ALLOWED
            ):
                upward.append(f"{name} imports {imported}, which stands below it")
    assert not upward, "\n".join(upward)


def test_pure_layers_do_no_io() -> None:
    """framing.py and the protocol package only take and return bytes (h11's rule):
    no event loop, no threads, and no socket calls (protocol/errors.py names
    socket's exception types, to re-create them from the wire, and nothing else of it)."""
    pures = [ROOT / "ioserver/framing.py", *sorted((ROOT / "ioserver/protocol").glob("*.py"))]
    assert len(pures) > 2, "the protocol package has moved"
    for path in pures:
        pure = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
        assert not imported & {"asyncio", "threading", "selectors", "uvloop"}, pure
        socket_uses = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "socket"
        }
        assert socket_uses <= {"gaierror", "herror", "timeout"}, (pure, socket_uses)
