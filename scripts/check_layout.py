#!/usr/bin/env python3
"""Check the package layout: module sizes, import cycles and the core/Qt boundary.

    python scripts/check_layout.py                    # src/napari_histosge, 500 lines per module
    python scripts/check_layout.py --max-lines 400 --widgets-max-lines 400 -v

Every ``import`` statement counts, at module level or inside a function (``TYPE_CHECKING``
blocks too). A module importing one of its own parent packages is not an edge (Python runs the
parent first anyway); a package ``__init__`` re-exporting its children is. Exits 1 when a
module is too long, an import cycle exists, a core module imports Qt, napari or magicgui, or the
package's top level holds more than 15 modules.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUI_ONLY = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "napari", "pyqtgraph")


def module_names(package: Path) -> dict[str, Path]:
    """Map dotted module names to files for every ``.py`` file under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path) -> list[str]:
    """Dotted names imported by one module (absolute, relative resolved)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(target)
            found.extend(f"{target}.{alias.name}" for alias in node.names)
    return found


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Edges between the package's own modules."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for target in imported(name, path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def gui_imports(name: str, path: Path) -> list[str]:
    """GUI libraries imported by a module."""
    roots = {t.split(".")[0] for t in imported(name, path)}
    return sorted(r for r in roots if r in GUI_ONLY)


def main(argv: list[str] | None = None) -> int:
    """Run the checks and print a report; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("package", nargs="?", default=str(ROOT / "src" / "napari_histosge"))
    p.add_argument("--max-lines", type=int, default=500, help="per module (default 500)")
    p.add_argument("--widgets-max-lines", type=int, default=400, help="per file in _widgets/")
    p.add_argument(
        "--max-top-level", type=int, default=15, help="modules at the package's top (default 15)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list every module and its size")
    args = p.parse_args(argv)
    package = Path(args.package).resolve()
    mods = module_names(package)
    graph = import_graph(mods)
    problems = []
    for name, path in sorted(mods.items()):
        n = len(path.read_text().splitlines())
        in_widgets = "._widgets" in name
        limit = args.widgets_max_lines if in_widgets else args.max_lines
        if args.verbose:
            print(f"{n:5d}  {name}  -> {', '.join(sorted(graph[name])) or '-'}")
        if n > limit:
            problems.append(f"too long: {name} has {n} lines (limit {limit})")
        gui = gui_imports(name, path)
        if gui and not in_widgets:
            problems.append(f"core module imports the GUI: {name} imports {', '.join(gui)}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    top = sorted(package.glob("*.py"))
    if len(top) > args.max_top_level:
        problems.append(
            f"too many top-level modules: {len(top)} (limit {args.max_top_level}); group them "
            "into subpackages"
        )
    if args.verbose:
        subpackages = sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())
        print(f"top level: {len(top)} modules; subpackages: {', '.join(subpackages)}")
    for line in problems:
        print(line)
    print(f"{len(mods)} modules, {sum(len(g) for g in graph.values())} imports, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
