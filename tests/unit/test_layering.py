"""The layering: a module imports only what stands above it in the list of
docs/architecture.md ("Layers"), and no modules import each other in a cycle.

Imports inside functions count too (a lazy import is still a dependency), and so
do imports under ``if TYPE_CHECKING:`` (a type is a dependency as well), except
IOServer's port factories, which by design reach down into ``drivers`` (the one
place the server dispatches to the drivers below it is listed in ALLOWED).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# docs/architecture.md "Layers", top to bottom; client/ stands below everything.
ORDER = [
    "ioserver._core",  # which core runs (the native one is ioserver._native)
    "ioserver._native",
    "ioserver.sched",
    "ioserver.channel",
    "ioserver.select",
    "ioserver.messages",
    "ioserver.framing",
    "ioserver.requests",
    "ioserver.watchdog",
    "ioserver.port",
    "ioserver.drivers",
    "ioserver.server",
    "ioserver.config",
    "ioserver.protocol",
    "ioserver.tlsclient",
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
    raise AssertionError(f"{module} is not in the list of layers (docs/architecture.md)")


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


# (importer, imported): the downward dispatch the layering allows (docs/architecture.md).
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


# (importer, imported): import edges left out of the cycle check, each with its reason.
# Empty: daemon/session.py no longer names serve.py (the last known cycle).
KNOWN_CYCLES: set[tuple[str, str]] = set()


def import_graph() -> dict[str, set[str]]:
    """Every module of ioserver/ and client/ (a subpackage stands for its
    ``__init__``) and the modules it imports, ALLOWED and KNOWN_CYCLES left out.
    The root package ``ioserver`` is left out as the layering leaves it: it only
    re-exports, and a ``from .. import name`` of it is a dependency on the names
    it re-exports, which stand above the importer or are caught above."""
    nodes: dict[str, Path] = {}
    for path in sorted([*ROOT.glob("ioserver/**/*.py"), *ROOT.glob("client/**/*.py")]):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name != "ioserver":
            nodes[name] = path

    def resolve(imported: str) -> str | None:
        # "ioserver.protocol.RpcError" -> "ioserver.protocol"; the extension
        # module (ioserver._native) and the root package are not nodes.
        while imported and imported not in nodes:
            imported = imported.rpartition(".")[0]
        return imported or None

    graph: dict[str, set[str]] = {}
    for name, path in nodes.items():
        as_module = f"{name}.__init__" if path.name == "__init__.py" else name
        edges = {resolve(m) for m in imports_of(as_module, path)}
        graph[name] = {
            imported
            for imported in edges
            if imported is not None
            and imported != name
            and (name, imported) not in KNOWN_CYCLES
            and not any(name.startswith(a) and imported.startswith(b) for a, b in ALLOWED)
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's
    algorithm, iterative): each is a set of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_cycle_finder_finds_cycles() -> None:
    """The finder itself: a three-module ring and a pair are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}, "f": {"a"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles() -> None:
    """No modules import each other, directly or through others, even within one
    layer (a package's modules, drivers/, daemon/): a cycle means neither module
    can be read, tested or loaded without the other."""
    graph = import_graph()
    assert "ioserver.protocol.connection" in graph, "the graph lost the protocol package"
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


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
