"""Layers contract: the package's imports point one way (issue 13, Deliver 1), checked on every import
statement, including the ones inside functions.

Why an AST checker and not import-linter/grimp: grimp builds its graph by walking the ``bsynth_hpc/``
folder, but setup.py installs three top-level folders into the package through ``package_dir``
(``kernels/`` -> ``bsynth_hpc.kernels``, ``data_prep/`` -> ``bsynth_hpc.prep``, ``configs/`` ->
``bsynth_hpc.configs``), so grimp does not see those subpackages (measured with import-linter 2.17:
``bsynth_hpc.kernels`` is missing from its graph) and could not check kernels -> ops. The checker below
reads the same mapping, parses every file once and resolves each import (relative ones included) to
the package module it names.

Rules (data below; a lower layer never imports a higher one, modules of one layer may import each
other unless FORBIDDEN says otherwise):
  * LAYERS, lowest first;
  * FORBIDDEN: extra pairs inside a layer (kernels are plain functions and never import the facade);
  * TOP_LEVEL_NAMES: ``import kernels`` / ``data_prep`` / ``configs`` / ``benchmarks`` from the package
    (the first three do not exist once installed; benchmarks/ is not in the wheel);
  * LAZY_TAG: an import of a package module inside a function carries ``# lazy: <reason>`` on its line
    (allowed only to avoid a heavy optional dependency).
Run ``python tests/test_layers.py`` for the report of every violation, grouped by file.
"""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bsynth_hpc"

SOURCE_DIRS: dict[str, str] = {  # package name -> folder (setup.py's package_dir)
    "bsynth_hpc": "bsynth_hpc",
    "bsynth_hpc.kernels": "kernels",
    "bsynth_hpc.prep": "data_prep",
    "bsynth_hpc.configs": "configs",
}

LAYERS: tuple[tuple[str, ...], ...] = (
    ("bsynth_hpc.errors", "bsynth_hpc.constants", "bsynth_hpc.argtypes", "bsynth_hpc.hashing",
     "bsynth_hpc.configtools", "bsynth_hpc.vocabulary", "bsynth_hpc.weights", "bsynth_hpc.slicing",
     "bsynth_hpc.configs"),
    ("bsynth_hpc.kernels", "bsynth_hpc.ops"),
    ("bsynth_hpc.nn",),
    ("bsynth_hpc.models", "bsynth_hpc.diffusion", "bsynth_hpc.losses"),
    ("bsynth_hpc.data", "bsynth_hpc.prep"),
    ("bsynth_hpc.engine",),
    ("bsynth_hpc.recipes", "bsynth_hpc.eval", "bsynth_hpc.study"),
    ("bsynth_hpc.cli", "bsynth_hpc.demo", "bsynth_hpc.__main__"),
)
"""Lowest first. ``bsynth_hpc`` itself (its ``__init__``: the version) sits below everything."""

FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("bsynth_hpc.kernels", "bsynth_hpc.ops"),
    ("bsynth_hpc.kernels", "bsynth_hpc.nn"),
)
"""(importer, imported) pairs refused even where the layers would allow them."""

TOP_LEVEL_NAMES: tuple[str, ...] = ("kernels", "data_prep", "configs", "benchmarks")
LAZY_TAG = re.compile(r"#\s*lazy:\s*\S")


@dataclass(frozen=True)
class Import:
    """One import statement of a package file, resolved to absolute module names."""

    path: Path
    line: int
    end_line: int
    importer: str
    targets: tuple[str, ...]
    top_level: str | None     # the imported top-level name when it is not the package
    in_function: bool


def _module_name(package: str, folder: Path, path: Path) -> tuple[str, bool]:
    """Dotted module name of `path` and whether it is a package ``__init__``."""
    parts = list(path.relative_to(folder).with_suffix("").parts)
    is_init = parts[-1] == "__init__"
    if is_init:
        parts = parts[:-1]
    return ".".join([package, *parts]), is_init


def _source_files() -> list[tuple[Path, str, bool]]:
    files = []
    for package, folder_name in SOURCE_DIRS.items():
        folder = ROOT / folder_name
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            files.append((path, *_module_name(package, folder, path)))
    return files


class _Collector(ast.NodeVisitor):
    def __init__(self, path: Path, module: str, is_init: bool) -> None:
        self.path, self.module, self.is_init = path, module, is_init
        self.depth = 0
        self.found: list[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, node: ast.stmt, targets: list[str], top_level: str | None) -> None:
        self.found.append(Import(self.path, node.lineno, node.end_lineno or node.lineno, self.module,
                                 tuple(targets), top_level, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            if top == PACKAGE:
                self._add(node, [alias.name], None)
            elif top in TOP_LEVEL_NAMES:
                self._add(node, [], top)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".") if self.is_init else self.module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        top = stem.split(".")[0]
        if top == PACKAGE:
            self._add(node, [stem] + [f"{stem}.{a.name}" for a in node.names], None)
        elif top in TOP_LEVEL_NAMES:
            self._add(node, [], top)


def collect_imports() -> list[Import]:
    """Every import of a package module (or of a forbidden top-level name) in the package's files."""
    out = []
    for path, module, is_init in _source_files():
        collector = _Collector(path, module, is_init)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        out.extend(collector.found)
    return out


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the layer holding `module` (-1 for the package root), None when unlisted."""
    if module == PACKAGE:
        return -1
    for index, layer in enumerate(LAYERS):
        if any(_within(module, prefix) for prefix in layer):
            return index
    return None


def _layer_name(index: int) -> str:
    return "/".join(p.rsplit(".", 1)[-1] for p in LAYERS[index])


def layer_violations(imports: list[Import]) -> list[tuple[Path, int, str]]:
    out = []
    for imp in imports:
        rel = imp.path.relative_to(ROOT)
        if imp.top_level is not None:
            what = "benchmarks/ is not installed" if imp.top_level == "benchmarks" else \
                f"the installed name is bsynth_hpc.{ {'data_prep': 'prep'}.get(imp.top_level, imp.top_level)}"
            out.append((rel, imp.line, f"imports top-level {imp.top_level!r} ({what})"))
            continue
        own = layer_of(imp.importer)
        if own is None:
            out.append((rel, imp.line, f"{imp.importer} is in no layer: add it to LAYERS"))
            continue
        # `from pkg import name` lists pkg and pkg.name: judge the most specific module that has a layer
        # (a name that is a function resolves to pkg itself).
        stem, *names = imp.targets
        for target in (names or [stem]):
            module = target if target != stem and _is_module(target) else stem
            theirs = layer_of(module)
            if theirs is None:
                out.append((rel, imp.line, f"imports {module}, which is in no layer: add it to LAYERS"))
            elif theirs > own:
                out.append((rel, imp.line, f"{imp.importer} (layer {_layer_name(own)}) imports {module} "
                                           f"(higher layer {_layer_name(theirs)})"))
            elif any(_within(imp.importer, a) and _within(module, b) for a, b in FORBIDDEN):
                out.append((rel, imp.line, f"{imp.importer} must not import {module} (FORBIDDEN)"))
    return sorted(set(out))


_MODULES: set[str] | None = None


def _is_module(name: str) -> bool:
    """Whether `name` is a module or package of the source tree or a layer (not a function or class)."""
    global _MODULES
    if _MODULES is None:
        _MODULES = {module for _, module, _ in _source_files()}
    return name in _MODULES or any(name in layer for layer in LAYERS)


def lazy_violations(imports: list[Import]) -> list[tuple[Path, int, str]]:
    out = []
    lines_of: dict[Path, list[str]] = {}
    for imp in imports:
        if not imp.in_function or imp.top_level is not None:
            continue
        lines = lines_of.setdefault(imp.path, imp.path.read_text(encoding="utf-8").splitlines())
        if not any(LAZY_TAG.search(lines[i - 1]) for i in range(imp.line, imp.end_line + 1)):
            out.append((imp.path.relative_to(ROOT), imp.line,
                        f"in-function import of {imp.targets[0]} without '# lazy: <reason>' (import it at the top)"))
    return sorted(set(out))


def _report(violations: list[tuple[Path, int, str]]) -> str:
    by_file: dict[Path, list[str]] = defaultdict(list)
    for path, line, message in violations:
        by_file[path].append(f"  {line}: {message}")
    return "\n".join(f"{path} ({len(items)})\n" + "\n".join(items) for path, items in sorted(by_file.items()))


# ------------------------------------------------------------------------------------------------ tests
def test_every_package_file_has_a_layer():
    missing = sorted({module for _, module, _ in _source_files() if layer_of(module) is None})
    assert not missing, f"modules in no layer (add them to LAYERS): {missing}"


def test_imports_point_down_the_layers():
    violations = layer_violations(collect_imports())
    assert not violations, "wrong-way imports:\n" + _report(violations)


def test_in_function_imports_say_why():
    violations = lazy_violations(collect_imports())
    assert not violations, "in-function imports without a reason:\n" + _report(violations)


def test_checker_sees_wrong_way_relative_and_in_function_imports(tmp_path, monkeypatch):
    """The checker itself: a fake tree with one upward import inside a function, one kernel importing
    the facade, one top-level `import kernels` and one tagged lazy import."""
    pkg = tmp_path / "bsynth_hpc"
    (pkg / "models").mkdir(parents=True)
    (tmp_path / "kernels").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "net.py").write_text(
        "from ..errors import ConfigError\n"
        "def f():\n    from ..engine import trainer\n"
        "def g():\n    from .. import recipes  # lazy: heavy optional dependency\n")
    (pkg / "ops.py").write_text("import kernels\n")
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "kernels" / "k.py").write_text("from bsynth_hpc.ops import use_triton\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SOURCE_DIRS",
                        {"bsynth_hpc": "bsynth_hpc", "bsynth_hpc.kernels": "kernels"})
    monkeypatch.setattr(sys.modules[__name__], "_MODULES", None)
    imports = collect_imports()
    layers = [(str(p), line, msg) for p, line, msg in layer_violations(imports)]
    assert any("net.py" in p and line == 3 and "bsynth_hpc.engine" in m for p, line, m in layers)
    assert any("net.py" in p and line == 5 and "bsynth_hpc.recipes" in m for p, line, m in layers)
    assert any("ops.py" in p and "top-level 'kernels'" in m for p, _, m in layers)
    assert any("k.py" in p and "FORBIDDEN" in m for p, _, m in layers)
    assert not any("net.py" in p and line == 1 for p, line, _ in layers)
    lazy = [(str(p), line) for p, line, _ in lazy_violations(imports)]
    assert lazy == [(str(Path("bsynth_hpc/models/net.py")), 3)]


if __name__ == "__main__":
    found = collect_imports()
    layered, untagged = layer_violations(found), lazy_violations(found)
    print(f"wrong-way imports ({len(layered)}):\n{_report(layered)}\n")
    print(f"in-function imports without '# lazy:' ({len(untagged)}):\n{_report(untagged)}")
    sys.exit(1 if layered or untagged else 0)
