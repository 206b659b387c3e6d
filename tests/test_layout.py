"""The library's layout rules (docs/architecture.md): short files, no import cycle, stages that do not reach back
into curation scripts or test components."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "track2view"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, everywhere: bool) -> set[str]:
    """Absolute names imported by a file: at module level only, or anywhere (also inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if everywhere else tree.body
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_no_library_file_is_longer_than_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in LIBRARY.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_library_imports_neither_curation_scripts_nor_test_components():
    bad = {}
    for name, path in modules().items():
        if name.startswith("track2view.testing"):
            continue
        found = {i for i in imports(path, everywhere=True)
                 if i.split(".")[0] == "data_curation" or i.startswith("track2view.testing")}
        if found:
            bad[name] = sorted(found)
    assert not bad, bad


def test_no_import_cycle_between_library_modules():
    mods = modules()
    graph = {name: {i if i in mods else i.rsplit(".", 1)[0] for i in imports(path, everywhere=False)} & set(mods)
             for name, path in mods.items()}
    graph = {name: {d for d in deps if d != name and not name.startswith(d + ".")} for name, deps in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
