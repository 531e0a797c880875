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


RUNTIME_FORBIDDEN = (
    "toolkit.train",
    "toolkit.data",
    "toolkit.model",
    "toolkit.run_folder",
    "toolkit.bases",
    "toolkit.weights",
)


def test_the_runtime_is_a_leaf_that_imports_nothing_of_training_data_loading_or_model_building():
    """What an app embeds: its imports stay within the base layer (files, facts, imaging, keras_io) and itself."""
    offenders = {
        name: sorted(i for i in _imports(path) if any(i == f or i.startswith(f + ".") for f in RUNTIME_FORBIDDEN))
        for name, path in _modules("toolkit.runtime").items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_export_bench_and_runtime_never_import_the_training_loop():
    offenders = {
        name: sorted(i for i in _imports(path) if i == "toolkit.train" or i.startswith("toolkit.train."))
        for prefix in ("toolkit.export", "toolkit.bench", "toolkit.runtime")
        for name, path in _modules(prefix).items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# The layer map: every module of the package, from the floor up. A module imports only from its own
# layer or below (tests/test_architecture.py fails for a module missing here, so the map stays whole).
LAYERS = [
    (
        "base",
        [
            "toolkit",
            "toolkit.errors",
            "toolkit.versions",
            "toolkit.quiet",
            "toolkit.tf_setup",
            "toolkit.progress",
            "toolkit.fileio",
            "toolkit.facts",
            "toolkit.imaging",
            "toolkit.layout",
            "toolkit.keras_io",
        ],
    ),
    (
        "data",
        [
            "toolkit.data*",
            "toolkit.metrics",
            "toolkit.calibration",
            "toolkit.operating_point",
            "toolkit.parity",
            "toolkit.hardware",
            "toolkit.bases",
            "toolkit.bases.spec",
            "toolkit.bases.vgg",
            "toolkit.bases.mobile",
            "toolkit.bases.server",
            "toolkit.bases.flops",
        ],
    ),
    (
        "model",
        [
            "toolkit.model",
            "toolkit.heatmap_model",
            "toolkit.tta",
            "toolkit.weights",
            "toolkit.run_folder",
            "toolkit.bases.catalog",
        ],
    ),
    ("runtime", ["toolkit.runtime*"]),
    (
        "stages",
        [
            "toolkit.train*",
            "toolkit.export*",
            "toolkit.bench*",
            "toolkit.evaluate",
            "toolkit.batch*",
            "toolkit.serve*",
            "toolkit.card",
            "toolkit.explain",
            "toolkit.tune*",
        ],
    ),
    ("cli", ["toolkit.console", "toolkit.cli_flags", "toolkit.cli_runtime", "toolkit.cli_train", "toolkit.cli"]),
]


def _layer_of(module: str) -> int | None:
    for number, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or (
                pattern.endswith("*") and (module == pattern[:-1] or module.startswith(pattern[:-1] + "."))
            ):
                return number
    return None


def _graph() -> dict[str, set[str]]:
    """Module -> the toolkit modules it imports (anywhere in the file), each resolved to a module of the package.

    `from toolkit.export import onnx_float` is an edge to the module `toolkit.export.onnx_float`;
    a submodule's implicit import of its parent package is not an edge (as import-linter counts them).
    """
    modules = _modules("toolkit")
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("toolkit"):
                named = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in named if t in modules] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("toolkit")]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def test_every_module_is_in_the_layer_map():
    assert sorted(m for m in _modules("toolkit") if _layer_of(m) is None) == []


def test_imports_point_down_the_layer_map():
    offenders = {}
    for name, edges in _graph().items():
        bad = sorted(t for t in edges if _layer_of(t) > _layer_of(name))
        if bad:
            offenders[name] = bad
    assert offenders == {}


def test_the_package_has_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(
                    " -> ".join(trail[trail.index(target) :] + [node, target])
                    if target in trail
                    else f"{node} -> {target}"
                )
            elif target not in state:
                visit(target, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_run_folder_names_are_written_only_in_layout():
    names = (
        '"best.keras"',
        '"labels.json"',
        '"config.json"',
        '"run.json"',
        '"metrics.json"',
        '"manifest.json"',
        '"train_state.json"',
        '"history.csv"',
        '"data_report.json"',
        '"bench.json"',
    )
    stray = [
        f"{path.relative_to(PACKAGE)}: {n}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "layout.py"
        for n in names
        if n in path.read_text()
    ]
    assert stray == []


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
    """No module over 400 lines, no function over 60 (the cli modules' Typer signatures excepted), no long argument lists."""
    problems = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if source.count("\n") > 400:
            problems.append(f"{path.name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or path.name.startswith("cli"):
                continue
            if node.end_lineno - node.lineno >= 60:
                problems.append(f"{path.name}:{node.name} {node.end_lineno - node.lineno + 1} lines")
            args = [a for a in node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")]
            if len(args) > 7:
                problems.append(f"{path.name}:{node.name} takes {len(args)} arguments")
    assert problems == []
