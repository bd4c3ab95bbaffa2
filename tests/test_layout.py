"""The package's shape: no import circles, and the engine below everything."""

import ast
import pathlib

import emface

ROOT = pathlib.Path(emface.__file__).parent


def _module_name(path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports():
    """Every emface module -> the emface modules it imports (at the top or inside functions)."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("emface"):
                    for a in node.names:
                        sub = f"{target}.{a.name}"
                        deps.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists() else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("emface"))
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycles(graph):
    seen, stack, found = set(), [], []

    def visit(n):
        if n in stack:
            found.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            # a package's __init__ re-exporting its submodules is not a circle
            if not (m.startswith(n + ".") and (ROOT.parent / n.replace(".", "/") / "__init__.py").exists()):
                visit(m)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    return found


def test_no_import_circles():
    assert _cycles(_imports()) == []


def test_the_engine_imports_nothing_above_it():
    graph = _imports()
    for name, deps in graph.items():
        if name.startswith("emface.engine"):
            above = [d for d in deps if not d.startswith("emface.engine")]
            assert above == [], (name, above)



def test_the_cli_is_a_client_of_the_public_api():
    """cli.py imports no private module or name of emface and reads no private attribute (``x._y``)."""
    tree = ast.parse((ROOT / "cli.py").read_text())
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            private.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("emface")):
            parts = (node.module or "").split(".")
            private += [f"line {node.lineno}: module {node.module}" for p in parts if p.startswith("_")]
            private += [f"line {node.lineno}: {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, private
