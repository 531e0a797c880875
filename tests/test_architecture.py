"""The layout promises of README's Development section, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every toolkit module `path` imports (anywhere in the file, or at module level only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("toolkit"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("toolkit"))
    return found


def _modules(prefix: str) -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if _module_name(p).startswith(prefix)}


def test_export_bench_and_runtime_never_import_the_training_loop():
    offenders = {
        name: sorted(i for i in _imports(path) if i == "toolkit.train" or i.startswith("toolkit.train."))
        for prefix in ("toolkit.export", "toolkit.bench", "toolkit.runtime")
        for name, path in _modules(prefix).items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_lower_layers_never_import_upper_ones():
    upper = ("toolkit.cli", "toolkit.train", "toolkit.export", "toolkit.bench", "toolkit.evaluate")
    lower = ("toolkit.model", "toolkit.data", "toolkit.hardware", "toolkit.runtime", "toolkit.imaging")
    lower += ("toolkit.fileio", "toolkit.errors", "toolkit.metrics", "toolkit.run_folder", "toolkit.parity")
    offenders = {}
    for prefix in lower:
        for name, path in _modules(prefix).items():
            bad = sorted(i for i in _imports(path) if i.startswith(upper))
            if bad:
                offenders[name] = bad
    assert offenders == {}


def test_runtime_has_no_module_level_tensorflow_and_never_redirects_descriptors():
    for name, path in _modules("toolkit.runtime").items():
        source = path.read_text()
        assert "toolkit.quiet" not in _imports(path), name
        assert "dup2" not in source and "silenced" not in source, name
        top = {n.names[0].name for n in ast.parse(source).body if isinstance(n, ast.Import)}
        assert not top & {"tensorflow", "keras"}, name


def test_every_error_class_lives_in_errors_py():
    stray = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases
            ):
                stray.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert stray == []


def test_modules_and_functions_stay_readable():
    """No module over 400 lines, no function over 60 (cli.py's Typer signatures excepted), no long argument lists."""
    problems = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if source.count("\n") > 400:
            problems.append(f"{path.name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or path.name == "cli.py":
                continue
            if node.end_lineno - node.lineno >= 60:
                problems.append(f"{path.name}:{node.name} {node.end_lineno - node.lineno + 1} lines")
            args = [a for a in node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")]
            if len(args) > 7:
                problems.append(f"{path.name}:{node.name} takes {len(args)} arguments")
    assert problems == []
