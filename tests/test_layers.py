"""The package's layers, read from the source (``ast``, nothing imported): who may import whom, no import cycle
between modules, no import of another module's private name. The table is docs/architecture.md's."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "letsfrag"

#: rank, then group: a module may import its own group and any group of a lower rank; groups of one rank are
#: independent of each other. Matched by the longest dotted prefix (``letsfrag.`` left out; "" is the package's
#: ``__init__``, the public API).
LAYERS: dict[str, tuple[int, str]] = {
    # the exception root, then what the processes agree on (pure, no I/O: keys, envelope, records, exit codes)
    "errors": (0, "errors"),
    "contract": (1, "contract"),
    **dict.fromkeys(
        ["clock", "units", "logs", "loops", "lifeline", "orphan", "claims", "events", "metrics", "redis_server",
         "connection", "bus", "environment", "ipc", "samples", "config"],
        (2, "foundations")),
    # cross-cluster RPC, both sides (the cluster answers through it, tools and bots call through it)
    "rpc": (3, "rpc"),
    # the roles and the read side: independent of each other; the simulator stands on the foundations only
    "broker": (4, "broker"),
    "supervisor": (4, "supervisor"),
    "cluster": (4, "cluster"),
    "sim": (4, "sim"),
    "snapshot": (4, "snapshot"),
    "": (5, "api"),
    # the programs on top: the command line, the dashboard it starts, the lab (rehearsal, demo, the demo bot)
    **dict.fromkeys(["cli", "__main__"], (6, "cli")),
    "tui": (7, "tui"),
    **dict.fromkeys(["lab", "samples.bot"], (8, "lab")),
}

#: imports against the table that stay for now, each with the reason (the files are being changed elsewhere)
KNOWN_WRONG_WAY: set[tuple[str, str]] = set()

#: packages whose modules may still import each other in a cycle (a cycle with a module outside them fails). None
#: now: a part built by its owner reads it through a Protocol or is given callbacks (the broker's commands and
#: metrics, the supervisor's parts), a dashboard screen sees the app as ``tui.dashboard.Dashboard``.
KNOWN_CYCLES_INSIDE: tuple[str, ...] = ()

#: private names of another module still used: (importer, module.name)
KNOWN_PRIVATE: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of the package
    name: str | None  # ``from target import name`` (None: ``import target``)
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(PACKAGE.parent).parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """Every import of a package module in ``path`` (module level, lazy in a function, or for type checking)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "letsfrag":
                    yield Import(name, alias.name, None, node.lineno, node.lineno in type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "letsfrag":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:  # ``from letsfrag import orphan``: the module itself
                    yield Import(name, submodule, None, node.lineno, node.lineno in type_only)
                else:
                    yield Import(name, target, alias.name, node.lineno, node.lineno in type_only)


@functools.cache
def imports_by_module() -> dict[str, tuple[Import, ...]]:
    known = modules()
    return {name: tuple(imports_of(name, path, known)) for name, path in known.items()}


def all_imports() -> list[Import]:
    return [imp for found in imports_by_module().values() for imp in found]


def _is_version(imp: Import) -> bool:
    """``from letsfrag import __version__``: a constant of the package's __init__, which imports nothing at run
    time (its API names load on first use)."""
    return imp.target == "letsfrag" and imp.name == "__version__"


def layer(module: str) -> tuple[int, str]:
    short = module.removeprefix("letsfrag").removeprefix(".")
    parts = short.split(".") if short else []
    for end in range(len(parts), -1, -1):
        key = ".".join(parts[:end])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def allowed(importer: str, imp: Import) -> bool:
    if _is_version(imp):
        return True
    (rank, group), (target_rank, target_group) = layer(importer), layer(imp.target)
    return group == target_group or target_rank < rank


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer(name)


def test_every_import_names_a_module_of_the_package() -> None:
    """A moved module leaves no import of its old name behind (relative ones included)."""
    known = modules()
    missing = sorted(f"{i.importer} (line {i.line}): {i.target}" for i in all_imports() if i.target not in known)
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_imports_follow_the_layer_table() -> None:
    wrong = sorted({f"{i.importer} -> {i.target} (line {i.line}): {layer(i.importer)[1]} may not import "
                    f"{layer(i.target)[1]}" for i in all_imports()
                    if not allowed(i.importer, i) and (i.importer, i.target) not in KNOWN_WRONG_WAY})
    assert not wrong, "imports against the layer table:\n" + "\n".join(wrong)


#: what the simulator may import besides itself: the contract it serves (close codes, gateway opcodes, the handover
#: parameter) and the foundations that do no I/O of the deployment (no Redis, no bus, no config of letsfrag)
SIM_MAY_IMPORT = frozenset({"letsfrag.contract", "letsfrag.errors", "letsfrag.clock", "letsfrag.units",
                            "letsfrag.lifeline"})


def test_the_simulator_stands_on_the_contract_and_io_free_foundations_only() -> None:
    """The simulated Discord shares the wire with the product, not its parts: it must not see Redis, the bus or a
    letsfrag config, so a test against it cannot pass because the simulator peeked at the deployment."""
    def ok(target: str) -> bool:
        return target.startswith("letsfrag.sim") or any(
            target == allowed or target.startswith(allowed + ".") for allowed in SIM_MAY_IMPORT)

    wrong = sorted(f"{i.importer} (line {i.line}) imports {i.target}" for i in all_imports()
                   if i.importer.startswith("letsfrag.sim") and not ok(i.target))
    assert not wrong, "the simulator imports beyond SIM_MAY_IMPORT:\n" + "\n".join(wrong)


def test_known_wrong_way_imports_are_still_there() -> None:
    """Fixing one of them means deleting it from KNOWN_WRONG_WAY, so the table stays honest."""
    seen = {(i.importer, i.target) for i in all_imports()}
    assert KNOWN_WRONG_WAY <= seen, f"no longer imported, delete from KNOWN_WRONG_WAY: {KNOWN_WRONG_WAY - seen}"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in all_imports():
        if imp.target in graph and imp.target != imp.importer and not _is_version(imp):
            graph[imp.importer].add(imp.target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module (each is an import cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    """Type-only and lazy imports count too: a cycle is a design knot whether or not Python trips on it."""
    cycles = [c for c in strongly_connected(_graph()) if _tolerated(c) is None]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _tolerated(cycle: list[str]) -> str | None:
    for package in KNOWN_CYCLES_INSIDE:
        if all(m == package or m.startswith(package + ".") for m in cycle):
            return package
    return None


def test_known_cycles_are_still_there() -> None:
    knotted = {_tolerated(c) for c in strongly_connected(_graph())}
    gone = [p for p in KNOWN_CYCLES_INSIDE if p not in knotted]
    assert not gone, f"no import cycle left inside {gone}: delete from KNOWN_CYCLES_INSIDE"


def _private_uses(name: str, path: Path) -> Iterator[tuple[str, str, int]]:
    """(importer, module.name, line) for each private name of another package module that ``name`` uses."""
    found = imports_by_module()[name]
    aliases: dict[str, str] = {}  # a local name bound to a package module -> that module
    for imp in found:
        if imp.name is not None and imp.name.startswith("_") and not imp.name.startswith("__"):
            yield name, f"{imp.target}.{imp.name}", imp.line
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules_here = [imp.target for imp in found if imp.line == node.lineno and imp.name is None]
            for alias in node.names:
                for target in modules_here:
                    if target.split(".")[-1] == alias.name.split(".")[-1]:
                        aliases[alias.asname or alias.name.split(".")[-1]] = target
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            yield name, f"{aliases[node.value.id]}.{node.attr}", node.lineno


def _private() -> list[tuple[str, str, int]]:
    return sorted(use for name, path in modules().items() for use in _private_uses(name, path))


def test_no_module_imports_a_private_name_of_another() -> None:
    found = [f"{who} uses {what} (line {line})" for who, what, line in _private() if (who, what) not in KNOWN_PRIVATE]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_known_private_uses_are_still_there() -> None:
    gone = KNOWN_PRIVATE - {(who, what) for who, what, _ in _private()}
    assert not gone, f"no longer used, delete from KNOWN_PRIVATE: {gone}"


# ------------------------------------------------------------------------------------------ the supervisor's parts

SUPERVISOR = PACKAGE / "supervisor"
#: the names under which a part of the supervisor holds its shell (the manager): ``m``, ``self.m`` ...
SHELL_NAMES = frozenset({"m", "manager", "shell"})
#: supervisor modules that still touch a private attribute of the manager: (module, attribute)
KNOWN_SHELL_PRIVATE: set[tuple[str, str]] = set()


def _holder(node: ast.expr) -> str | None:
    """``m`` for ``m`` and ``self.m`` (the same for ``manager`` and ``shell``), else None."""
    if isinstance(node, ast.Name) and node.id in SHELL_NAMES:
        return node.id
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            and node.attr in SHELL_NAMES):
        return node.attr
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _shell_private_uses() -> list[tuple[str, str, int]]:
    """``m._x`` / ``self.m._x`` / ``manager._x`` in a supervisor module other than the manager."""
    found = []
    for path in sorted(SUPERVISOR.glob("*.py")):
        if path.name == "manager.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and _is_private(node.attr) and _holder(node.value) is not None:
                found.append((path.stem, node.attr, node.lineno))
    return found


def test_no_supervisor_part_touches_the_managers_private_state() -> None:
    """The parts share ``HostState`` and ask the shell through its public interface (supervisor/shell.py)."""
    found = [f"supervisor/{who}.py uses m.{what} (line {line})" for who, what, line in _shell_private_uses()
             if (who, what) not in KNOWN_SHELL_PRIVATE]
    assert not found, "a part of the supervisor reaches into the manager:\n" + "\n".join(found)


def test_known_shell_private_uses_are_still_there() -> None:
    gone = KNOWN_SHELL_PRIVATE - {(who, what) for who, what, _ in _shell_private_uses()}
    assert not gone, f"no longer used, delete from KNOWN_SHELL_PRIVATE: {gone}"


def test_the_manager_calls_only_public_methods_of_its_parts() -> None:
    """``self.lifecycle._decide(...)`` in manager.py fails: a part's entry points are public."""
    tree = ast.parse((SUPERVISOR / "manager.py").read_text(encoding="utf-8"))
    found = [f"manager.py line {node.lineno}: self.{node.value.attr}.{node.attr}" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and _is_private(node.attr)
             and isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
             and node.value.value.id == "self" and not _is_private(node.value.attr)]
    assert not found, "the manager reaches into a part's private state:\n" + "\n".join(found)


# ------------------------------------------------------------------------------------------ one name, one meaning


def test_every_module_file_name_is_used_once() -> None:
    """``main.py`` or ``commands.py`` in three packages makes a traceback ambiguous: every basename once (the
    package files ``__init__`` and ``__main__`` aside)."""
    by_name: dict[str, list[str]] = {}
    for name, path in modules().items():
        if path.stem not in ("__init__", "__main__"):
            by_name.setdefault(path.name, []).append(name)
    assert not {n: m for n, m in by_name.items() if len(m) > 1}


def test_every_class_name_is_used_once() -> None:
    """A class name says which class is meant: no two module-level classes of the package share one."""
    by_name: dict[str, list[str]] = {}
    for name, path in modules().items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                by_name.setdefault(node.name, []).append(name)
    assert not {n: m for n, m in by_name.items() if len(m) > 1}
