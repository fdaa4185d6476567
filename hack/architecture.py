#!/usr/bin/env python3
"""Measure the package's shape: module sizes, long functions, import cycles, name matching.

    python hack/architecture.py            # a report of python/scoreops
    python hack/architecture.py --json     # the same, as JSON

What it measures (``tests/unit/test_architecture.py`` holds the tree to it):

* modules over 400 lines, and whether their docstring states why (a line starting ``Size:``);
* functions over 60 lines, counted from ``def`` to the last line, docstring included;
* import cycles between modules, counting imports inside functions too (a lazy import is
  still a dependency), not those under ``if TYPE_CHECKING:`` (annotations only);
* comparisons (``==``, ``!=``, ``in``, ``not in``) of a string literal that names a strategy,
  an algorithm or a resource kind, outside the modules that register them;
* packages the wheel would ship (setuptools' discovery over ``python/``, as pyproject says).

Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

NAMES = {
    "strategy": {"single", "self-correct", "self-consistency", "best-of-n", "moa"},
    "algorithm": {"score", "grpo", "mgrpo", "cory", "star"},
    "kind": {"ScoreRun", "EvalSuite", "CorrectorService"},
}
"""The names whose matching belongs in a registry, by what they name."""

REGISTRIES = {
    "scoreops.strategies.registry",
    "scoreops.algorithms.registry",
    "scoreops.k8s.kinds",
}
"""Modules allowed to compare those names: the registries themselves."""


@dataclass
class Report:
    modules: int = 0
    functions: int = 0
    long_modules: list[dict[str, object]] = field(default_factory=list)
    long_functions: list[dict[str, object]] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)
    name_comparisons: list[dict[str, object]] = field(default_factory=list)
    wheel_packages: list[str] = field(default_factory=list)


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The known modules one import statement depends on."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            found |= {alias.name} & known
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            if candidate in known:
                found.add(candidate)
            elif base in known:
                found.add(base)
    return found


def _is_type_checking(node: ast.AST) -> bool:
    """An ``if TYPE_CHECKING:`` block (imports for annotations only, not run)."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            for w in edges:
                if w == v:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _name_comparisons(tree: ast.AST, module: str, rel: str) -> list[dict[str, object]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not all(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            continue
        literals: list[str] = []
        for operand in [node.left, *node.comparators]:
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                literals.append(operand.value)
            elif isinstance(operand, (ast.Tuple, ast.List, ast.Set)):
                literals += [e.value for e in operand.elts
                             if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        for what, names in NAMES.items():
            hits = sorted(set(literals) & names)
            if hits:
                found.append({"module": module, "file": rel, "line": node.lineno,
                              "names": what, "literals": hits})
    return found


def _wheel_packages(src: Path) -> list[str]:
    try:
        from setuptools import find_packages
    except ImportError:  # pragma: no cover - setuptools is how the wheel is built
        return []
    return sorted(find_packages(where=str(src)))


def measure(root: Path = ROOT) -> Report:
    src = root / "python"
    files = sorted((src / "scoreops").rglob("*.py"))
    modules = {_module_name(f, src): f for f in files}
    known = set(modules)
    report = Report(modules=len(modules))
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        rel = str(path.relative_to(root))
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            doc = ast.get_docstring(tree) or ""
            reason = next((ln.strip() for ln in doc.splitlines()
                           if ln.strip().startswith("Size:")), None)
            report.long_modules.append({"file": rel, "lines": lines, "reason": reason})
        graph[name] = set()
        typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                       for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                report.functions += 1
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    report.long_functions.append({"file": rel, "function": node.name,
                                                  "lines": n})
            graph[name] |= _imported(node, name, path.name == "__init__.py", known)
        if name not in REGISTRIES:
            report.name_comparisons += _name_comparisons(tree, name, rel)
    report.cycles = _cycles(graph)
    report.long_functions.sort(key=lambda f: -int(f["lines"]))  # type: ignore[call-overload]
    report.long_modules.sort(key=lambda m: -int(m["lines"]))  # type: ignore[call-overload]
    report.wheel_packages = _wheel_packages(src)
    return report


def render(report: Report) -> str:
    out = [f"{report.modules} modules, {report.functions} functions", "",
           f"modules over {MAX_MODULE_LINES} lines: {len(report.long_modules)}"]
    out += [f"  {m['lines']:5}  {m['file']}  {m['reason'] or '(no Size: reason)'}"
            for m in report.long_modules]
    out += ["", f"functions over {MAX_FUNCTION_LINES} lines: {len(report.long_functions)}"]
    out += [f"  {f['lines']:5}  {f['file']}:{f['function']}" for f in report.long_functions]
    out += ["", f"import cycles: {len(report.cycles)}"]
    out += [f"  {' <-> '.join(c)}" for c in report.cycles]
    out += ["", f"name comparisons outside registries: {len(report.name_comparisons)}"]
    out += [f"  {c['file']}:{c['line']}  {c['names']} {', '.join(c['literals'])}"  # type: ignore[arg-type]
            for c in report.name_comparisons]
    testing = [p for p in report.wheel_packages if p.startswith("scoreops.testing")]
    out += ["", f"packages in the wheel: {len(report.wheel_packages)}"
                f" (scoreops.testing: {'yes' if testing else 'no'})"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="repository root")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    report = measure(args.root)
    print(json.dumps(asdict(report), indent=1) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
