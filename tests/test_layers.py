"""The house's layering (docs/design.md, "The layers"), checked from the code's own imports.

Every ``import`` statement of hetccl's Python modules counts, those inside functions too (a lazy
import that only hides a cycle is still a cycle). Checked: no two modules import each other, round
any loop (file level and package level: a package counts as one room), and every import goes to the
same layer or one below. An import of a package's submodule (``from .. import dtypes``) counts as
an import of that module, not of the package's ``__init__``.
"""
from __future__ import annotations

import ast
import functools
import os

from tests.launcher import REPO_ROOT

PKG = os.path.join(REPO_ROOT, "hetccl")

# lowest first; a module may import its own layer and the layers below (docs/design.md)
LAYERS = [
    ("ground", ["_native", "_checkout.py", "errors.py", "ops.py", "config.py", "version.py", "dtypes.py",
                "units.py", "context.py", "memory"]),
    ("bridges, bootstrap", ["bridges", "bootstrap"]),
    ("topology", ["topology"]),
    ("transports", ["transports"]),
    ("recovery, point to point", ["recovery", "p2p.py"]),
    ("flight records", ["flight"]),
    ("collectives", ["collectives"]),
    ("communicator", ["comm.py"]),
    ("face", ["__init__.py", "__main__.py", "cli.py", "tuning", "simulate", "benchmark", "torch"]),
]


def _modules():
    for dp, _, fn in os.walk(PKG):
        for f in fn:
            if f.endswith(".py"):
                yield os.path.join(dp, f)


def _resolve(name):
    """The file of module ``name`` (hetccl.x.y), or None."""
    base = os.path.join(REPO_ROOT, *name.split("."))
    for c in (base + ".py", os.path.join(base, "__init__.py"), base + ".pyx"):
        if os.path.exists(c):
            return c
    return None


def _imports(path):
    pkg = os.path.relpath(os.path.dirname(path), REPO_ROOT).replace(os.sep, ".")
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [(base, [a.name for a in node.names])]
        else:
            continue
        for base, members in names:
            if not base.startswith("hetccl"):
                continue
            subs = [t for t in (_resolve(f"{base}.{m}") for m in members or ()) if t]
            targets = subs if subs and len(subs) == len(members or ()) else [_resolve(base)] + subs
            for t in targets:
                if t and t != path:
                    yield t


@functools.lru_cache(maxsize=1)
def _graph():
    return {p: set(_imports(p)) for p in _modules()}


def _room(path):
    rel = os.path.relpath(path, PKG).split(os.sep)
    return rel[0]


def _cycles(edges):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def _rel(p):
    return os.path.relpath(p, REPO_ROOT)


def test_no_module_imports_round_a_loop():
    g = _graph()
    assert not _cycles(g), [[_rel(p) for p in c] for c in _cycles(g)]


def test_no_package_imports_round_a_loop():
    rooms = {}
    for a, targets in _graph().items():
        for b in targets:
            if _room(a) != _room(b):
                rooms.setdefault(_room(a), set()).add(_room(b))
    assert not _cycles(rooms), _cycles(rooms)


def test_imports_go_down_the_layers():
    layer = {room: k for k, (_, rooms) in enumerate(LAYERS) for room in rooms}
    g = _graph()
    unplaced = sorted({_room(p) for p in g} - set(layer))
    assert not unplaced, f"place these in LAYERS (and in docs/design.md): {unplaced}"
    up = [f"{_rel(a)} -> {_rel(b)} ({LAYERS[layer[_room(a)]][0]} -> {LAYERS[layer[_room(b)]][0]})"
          for a, targets in g.items() for b in targets if layer[_room(b)] > layer[_room(a)]]
    assert not up, "\n".join(up)
