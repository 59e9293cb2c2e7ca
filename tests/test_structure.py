"""The package's shape: no module imports one that imports it back (at any depth, function-level
imports included), and the modules meant to run without torch do not import it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "digits_lightning"


def imports(path: Path) -> set[str]:
    """Every module `path` imports, top-level or inside a function, by its full name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def graph() -> dict[str, set[str]]:
    modules = {f"digits_lightning.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__main__"}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_module_imports_one_that_imports_it_back():
    edges = graph()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(edges[name]):
            if target in path:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif len(path) < len(edges):
                visit(target, path + [target])

    for start in sorted(edges):
        visit(start, [start])
    assert not cycles, "import circles:\n" + "\n".join(sorted(set(cycles)))


def test_the_walk_sees_function_level_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from digits_lightning import plots\n")
    assert "digits_lightning.plots" in imports(tmp_path / "m.py")


def closure(name: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for target in edges[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_drawing_decoding_and_writing_results_need_no_torch():
    """`plots` draws, `preprocess` decodes, `results` writes: numpy, matplotlib and Pillow only, so
    a runtime without torch (an exported model) can use them; `onnx_runtime` and `predict_onnx` are
    that runtime."""
    edges = graph()
    for name in ("plots", "preprocess", "results", "image_files", "errors", "atomic_write", "cpus", "heap", "collector", "conventions", "onnx_runtime", "predict_onnx"):
        module = f"digits_lightning.{name}"
        for dependency in {module} | closure(module, edges):
            third_party = {m.split(".")[0] for m in imports(PACKAGE / f"{dependency.split('.')[-1]}.py")}
            assert not third_party & {"torch", "torchvision", "lightning", "torchmetrics"}, (name, dependency)
