"""The package's structure as text: its layers, how many imports run between them, the imports
that run back up (from a lower layer to a higher one) and the import cycles between modules.

    python tools/structure_map.py                 # this checkout's src/hyperprune
    python tools/structure_map.py --root DIR      # another checkout (e.g. a git worktree of an old commit)

Every import counts, at module level or inside a function: an import deferred into a function to
dodge a cycle is still an arrow. ``tests/test_layers.py`` holds the package to 0 and 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

# Top to bottom. A module belongs to the first layer whose prefix it starts with.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("hyperprune.cli", "hyperprune.cli_distill", "hyperprune.cli_flags", "hyperprune.__main__")),
    ("api", ("hyperprune.api", "hyperprune.__init__")),
    ("workflows", ("hyperprune.workflows", "hyperprune.compact", "hyperprune.apply_masks", "hyperprune.recover")),
    ("engine (driver)", ("hyperprune.engine",)),
    ("methods", ("hyperprune.methods",)),
    ("numerics", ("hyperprune.numerics",)),
    ("eval / models / data / kernels", ("hyperprune.eval", "hyperprune.models", "hyperprune.data", "hyperprune.sparse",
                                        "hyperprune.testing")),
    ("export", ("hyperprune.export",)),
    ("config / masks / errors / report", ("hyperprune.config", "hyperprune.masks", "hyperprune.errors",
                                          "hyperprune.report", "hyperprune.utils", "hyperprune.faults")),
]


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise ValueError(f"module {module} is in no layer; add it to LAYERS")


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package under ``root`` (a ``src`` folder)."""
    found = {}
    for path in sorted((root / "hyperprune").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1 and parts[:-1] != ["hyperprune"]:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: set[str], package_of: str) -> set[str]:
    """The package's modules that ``path`` imports (the longest known prefix of each import)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    targets = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package_of.split(".")[: len(package_of.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
    return targets


def graph(root: Path) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    edges = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges[name] = {t for t in imports(path, known, package) if t != name and not name.startswith(t + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def back_arrows(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower layer up to a higher one (rank grows downward)."""
    return sorted((a, b) for a, targets in edges.items() for b in targets if layer_of(b) < layer_of(a))


def report(root: Path) -> str:
    edges = graph(root)
    lines = ["layers, top to bottom (modules, lines):"]
    members: dict[int, list[str]] = defaultdict(list)
    for name in edges:
        members[layer_of(name)].append(name)
    found = modules(root)
    for rank, (title, _) in enumerate(LAYERS):
        names = members.get(rank, [])
        size = sum(len(found[n].read_text().splitlines()) for n in names)
        lines.append(f"  {rank}. {title}: {len(names)} modules, {size} lines")
    between: dict[tuple[int, int], int] = defaultdict(int)
    for a, targets in edges.items():
        for b in targets:
            between[(layer_of(a), layer_of(b))] += 1
    lines.append("imports between layers (from -> to: count):")
    for (a, b), count in sorted(between.items()):
        if a != b:
            lines.append(f"  {LAYERS[a][0]} -> {LAYERS[b][0]}: {count}{'  (runs back up)' if b < a else ''}")
    up = back_arrows(edges)
    lines.append(f"imports that run back up: {len(up)}")
    lines += [f"  {a} -> {b}" for a, b in up]
    found_cycles = cycles(edges)
    lines.append(f"cycles: {len(found_cycles)}")
    lines += [f"  {' <-> '.join(c)}" for c in found_cycles]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="a checkout (its src/hyperprune is read; default: this one)")
    args = parser.parse_args(argv)
    print(report(args.root / "src"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
