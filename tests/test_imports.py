"""The import graph: no circle in fastzhang/, kernels/ or bench/, and fastzhang's layers as
docs/architecture.md draws them (a module imports only what is listed above it or on its line)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^  ([\w/]+(?:\.py|/)(?:, [\w/]+(?:\.py|/))*)\s{2,}")


def module_files() -> dict[str, Path]:
    """Dotted name -> file: fastzhang's and kernels' (installed as fastzhang.kernels), bench's by bare name."""
    out = {}
    for path in sorted(REPO.glob("fastzhang/**/*.py")) + sorted(REPO.glob("kernels/**/*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[0] == "kernels":
            parts.insert(0, "fastzhang")
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted(REPO.glob("bench/**/*.py")):
        parts = list(path.relative_to(REPO / "bench").with_suffix("").parts)  # bench runs with bench/ on sys.path
        out["bench:" + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules `name` imports anywhere in its file (functions' lazy imports too)."""
    prefix = "bench:" if name.startswith("bench:") else ""
    bare = name.removeprefix(prefix)
    package = bare if path.name == "__init__.py" else bare.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(filter(None, [*up, base]))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            for candidate in (prefix + target, target):
                if candidate in known and candidate != name:
                    found.add(candidate)
                    break
    return found


def graph() -> dict[str, set[str]]:
    known = module_files()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk (each reported once, from where it was entered)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def layers() -> list[list[str]]:
    """The entries of docs/architecture.md's layer drawing, one list per line, foundations first."""
    text = (REPO / "docs/architecture.md").read_text()
    block = text.split("```\n", 2)[1]
    return [m.group(1).split(", ") for line in block.splitlines() if (m := ENTRY.match(line))]


def rank_of(module: str, lines: list[list[str]]) -> int:
    """The line of the entry that holds `module`: its own file, else the longest folder holding it."""
    rel = module.removeprefix("fastzhang.").replace(".", "/")
    best = None
    for rank, entries in enumerate(lines):
        for entry in entries:
            if entry.endswith(".py") and entry.removesuffix(".py") == rel:
                return rank
            if entry.endswith("/") and (rel + "/").startswith(entry) and (best is None or len(entry) > best[1]):
                best = (rank, len(entry))
    if best is None:  # a package's __init__ (data/, train/): the first line of its folder
        best = min(((rank, 0) for rank, entries in enumerate(lines) for e in entries if e.startswith(rel + "/")),
                   default=None)
    assert best is not None, f"{module} is in no entry of docs/architecture.md's layers"
    return best[0]


def test_no_import_circle_anywhere():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_imports_point_up_the_documented_layers_and_bench_stays_outside():
    lines, edges = layers(), graph()
    exempt = {"fastzhang", "fastzhang.__main__"}  # the version string; `python -m fastzhang` calling cli
    down = []
    for source, targets in edges.items():
        if source.startswith("bench:"):
            continue
        assert not any(t.startswith("bench:") for t in targets), f"{source} imports bench/"
        if source in exempt:
            continue
        for target in targets - exempt:
            if rank_of(target, lines) > rank_of(source, lines):
                down.append(f"{source} -> {target}")
    assert down == []
