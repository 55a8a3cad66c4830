"""The structure rules of architecture.md, read from the source: imports run one way between rooms, protocol/
imports nothing that does I/O, and no module reaches into another object's private (`_x`) attributes."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "nonstop"

# Each room may import only rooms of a lower rank (and itself). Equal ranks do not import each other.
RANK = {
    "nonstop": 0, "log": 0, "reset": 0,     # the package's root: version, name, the logger, the socket reset
    "protocol": 1, "config": 1, "console": 1,   # console: the web console's files (served by server, api)
    "media": 2, "master": 2, "access": 2,   # master: processes, signals, listening sockets; no media, no serving
    "cluster": 3,
    "api": 4, "handover": 4,
    "server": 5, "bench": 5,
    "cli": 6,
}
# Known, owned elsewhere: handover/transfer.py reads the worker's totals through api.metrics (the handover's
# branch moves them; drop this line when it lands).
KNOWN_IMPORTS = {("handover", "api")}
KNOWN_PRIVATE = {("handover/transfer.py", "wire._recv_exact")}
# Documented private names of the standard library.
STDLIB_PRIVATE = {"os._exit", "sys._getframe"}


@functools.cache
def modules() -> list:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(PACKAGE.rglob("*.py"))]


def room_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) == 1:
        return "nonstop" if rel.stem == "__init__" else rel.stem
    return rel.parts[0]


def imported_rooms(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "nonstop":     # `from nonstop import log` names a room too
                names += [f"nonstop.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "nonstop":
                target = parts[1] if len(parts) > 1 else "nonstop"
                yield node.lineno, name, target if target in RANK else "nonstop"


def test_every_room_has_a_rank():
    rooms = {room_of(path) for path, _ in modules()}
    assert rooms <= set(RANK), f"new rooms need a rank in this test: {sorted(rooms - set(RANK))}"


def test_imports_run_one_way_between_rooms():
    wrong = []
    for path, tree in modules():
        room = room_of(path)
        for line, name, target in imported_rooms(tree):
            if target == room or (room, target) in KNOWN_IMPORTS:
                continue
            if RANK[target] >= RANK[room]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {room} imports {name} ({target})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_protocol_is_sans_io():
    """protocol/ may import only itself and the package root (the version): no log, no sockets, no asyncio."""
    io_modules = {"socket", "asyncio", "time", "select", "selectors", "threading", "subprocess"}
    wrong = []
    for path, tree in modules():
        if room_of(path) != "protocol":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + ([f"nonstop.{a.name}" for a in node.names] if node.module == "nonstop"
                                         else [])
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in io_modules or (top == "nonstop" and name not in ("nonstop",)
                                         and not name.startswith("nonstop.protocol")
                                         and name not in ("nonstop.SERVER_NAME", "nonstop.__version__")):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}")
    assert not wrong, "protocol/ must stay sans-IO:\n" + "\n".join(wrong)


def test_no_module_reaches_into_another_objects_privates():
    """`other._x` is allowed on self and cls only, and in a class's own classmethods (restore() fills a new
    instance of its own class)."""
    wrong = []

    def visit(node, path, own_class_method):
        for child in ast.iter_child_nodes(node):
            inside = own_class_method
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside = any(isinstance(d, ast.Name) and d.id in ("classmethod", "staticmethod")
                             for d in child.decorator_list)
            if isinstance(child, ast.Attribute) and child.attr.startswith("_") and not child.attr.startswith("__"):
                value = child.value
                text = ast.unparse(child)
                rel = str(path.relative_to(PACKAGE))
                if not (isinstance(value, ast.Name) and value.id in ("self", "cls")) and not inside \
                        and text not in STDLIB_PRIVATE and (rel, text) not in KNOWN_PRIVATE:
                    wrong.append(f"nonstop/{rel}:{child.lineno}: {text}")
            visit(child, path, inside)

    for path, tree in modules():
        visit(tree, path, False)
    assert not wrong, "private attributes reached from outside their object:\n" + "\n".join(wrong)
