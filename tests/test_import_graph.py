"""The import graph of thanosql_pg, read from the source with ast (nothing is imported
except the family specs, each in a fresh interpreter):

- no module imports another module's private names (``from m import _x``, ``m._x``);
- a family package imports only the shared package, the contract, the registry,
  the errors and its own modules: never another family;
- the shared package, the contract and the registry import no family;
- a family's spec package imports no torch, transformers, timm, numpy, PIL or audio
  library (the preprocessor and the proxy load every spec);
- error classes are defined in thanosql_pg/errors.py only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from thanosql_pg import algorithms, errors
from thanosql_pg.algorithms import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "thanosql_pg"
HEAVY = ("torch", "transformers", "timm", "numpy", "PIL", "torchaudio", "soundfile", "safetensors")
ALLOWED_FOR_FAMILIES = ("thanosql_pg.algorithms.shared", "thanosql_pg.algorithms.contract",
                        "thanosql_pg.algorithms.registry", "thanosql_pg.errors", "thanosql_pg.shapes",
                        "thanosql_pg.progress_text")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Import:
    module: str  # the thanosql_pg module imported (a submodule when ``from pkg import sub``)
    names: tuple[str, ...]  # names taken from it (from-imports); () for ``import m``
    line: int


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))


def absolute(name: str, node: ast.ImportFrom) -> str:
    """The module a from-import reads, relative imports resolved."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[name].name == "__init__.py"
    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str) -> list[Import]:
    """The thanosql_pg imports of module ``name``, at any depth (function-level ones too)."""
    out = []
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            out += [Import(a.name, (), node.lineno) for a in node.names if a.name.startswith("thanosql_pg")]
        elif isinstance(node, ast.ImportFrom):
            source = absolute(name, node)
            if not source.startswith("thanosql_pg"):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:  # ``from pkg import submodule``
                    out.append(Import(sub, (), node.lineno))
                else:
                    out.append(Import(source, (alias.name,), node.lineno))
    return out


def bound_modules(name: str) -> dict[str, str]:
    """Local names bound to thanosql_pg modules (``import a.b as x``, ``from a import b``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("thanosql_pg") and a.asname:
                    out[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            source = absolute(name, node)
            for a in node.names:
                if f"{source}.{a.name}" in MODULES:
                    out[a.asname or a.name] = f"{source}.{a.name}"
    return out


def test_every_module_parses() -> None:
    assert "thanosql_pg.algorithms.registry" in MODULES and len(MODULES) > 40
    for name in MODULES:
        tree(name)


def test_no_module_imports_another_module_s_private_names() -> None:
    found = []
    for name in MODULES:
        for imp in imports(name):
            found += [f"{name}:{imp.line}: from {imp.module} import {n}" for n in imp.names if is_private(n)]
        bound = bound_modules(name)
        for node in ast.walk(tree(name)):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and is_private(node.attr) and bound[node.value.id] != name):
                found.append(f"{name}:{node.lineno}: {bound[node.value.id]}.{node.attr}")
    assert not found, "\n".join(found)


def family_packages() -> dict[str, str]:
    """Built-in family name -> its package (the spec module's)."""
    out = {}
    for spec in algorithms.BUILTIN:
        mod = sys.modules[spec]
        out[mod.FAMILY.name] = spec
    return out


def test_every_registered_family_is_one_package() -> None:
    packages = family_packages()
    assert set(packages) == {"image_classification", "speech_recognition", "image_embedding", "clip"}
    for family, package in packages.items():
        fam = registry.FAMILIES[family]
        assert MODULES[package].name == "__init__.py", package
        assert fam.model is not None and fam.model.startswith(package + "."), (family, fam.model)
        assert fam.model in MODULES, fam.model


@pytest.mark.parametrize("package", algorithms.BUILTIN)
def test_families_import_only_shared_code_and_their_own(package: str) -> None:
    found = []
    for name in [m for m in MODULES if m == package or m.startswith(package + ".")]:
        for imp in imports(name):
            own = imp.module == package or imp.module.startswith(package + ".")
            allowed = any(imp.module == a or imp.module.startswith(a + ".") for a in ALLOWED_FOR_FAMILIES)
            if not (own or allowed):
                found.append(f"{name}:{imp.line}: imports {imp.module}")
    assert not found, "\n".join(found)


def test_shared_code_imports_no_family() -> None:
    below = [m for m in MODULES if m.startswith("thanosql_pg.algorithms.shared")]
    below += ["thanosql_pg.algorithms.contract", "thanosql_pg.algorithms.registry", "thanosql_pg.errors"]
    found = []
    for name in below:
        for imp in imports(name):
            if not any(imp.module == a or imp.module.startswith(a + ".") for a in ALLOWED_FOR_FAMILIES):
                found.append(f"{name}:{imp.line}: imports {imp.module}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", [*algorithms.BUILTIN, "thanosql_pg.algorithms",
                                    "thanosql_pg.preprocessor"])
def test_specs_import_no_ml_stack(module: str) -> None:
    code = (f"import importlib, json, sys; importlib.import_module({module!r});"
            f" print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], module


def test_error_classes_live_in_errors_py() -> None:
    classes = {n for n in dir(errors) if isinstance(getattr(errors, n), type)
               and issubclass(getattr(errors, n), errors.ThanoSQLError)}
    found = []
    for name in MODULES:
        if name == "thanosql_pg.errors":
            continue
        for node in ast.walk(tree(name)):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                         for b in node.bases}
                if bases & (classes | {"SQLSyntaxError"}):
                    found.append(f"{name}:{node.lineno}: class {node.name}")
    assert not found, "\n".join(found)


def test_each_error_class_has_one_sqlstate() -> None:
    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.ThanoSQLError):
            assert len(cls.sqlstate) == 5, name
    assert errors.lookup("42P01") is errors.UndefinedTable
    assert not issubclass(errors.UndefinedTable, errors.DataError)
    with pytest.raises(TypeError):
        errors.DataError("x", sqlstate="42P01")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        type("Bad", (errors.ThanoSQLError,), {"sqlstate": "22000"})


def test_no_modules_import_each_other_in_a_circle() -> None:
    """Every import counts: at module level, inside functions, and under TYPE_CHECKING (an
    import the type checker needs is a dependency all the same, and a function-level one
    runs as surely as any other)."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        deps = set()
        for imp in imports(name):
            target = imp.module
            if imp.names and all(compiled(target, n) for n in imp.names):
                continue  # ``from pkg import relay``: a C extension module, which imports nothing
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]  # ``import a.b.c`` of a module's attribute
            if target in MODULES and target != name:
                deps.add(target)
        graph[name] = deps
    found: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                found.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not found, "\n".join(found)


def compiled(package: str, name: str) -> bool:
    """Whether ``package.name`` is a C extension module built from ``name.c`` beside it."""
    return package in MODULES and (MODULES[package].parent / f"{name}.c").exists()
