"""The hand-written stub ``_core.pyi`` matches the compiled module."""

from __future__ import annotations

import ast
from pathlib import Path

import ferroware
from ferroware import _core

STUB = Path(ferroware.__file__).with_name("_core.pyi")


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def test_stub_is_shipped_with_the_package() -> None:
    assert STUB.is_file()
    assert STUB.with_name("py.typed").is_file()


def test_stub_and_module_name_the_same_things() -> None:
    tree = _stub_tree()
    stub_names = {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    stub_names |= {
        node.target.id for node in tree.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    module_names = {name for name in dir(_core) if not name.startswith("_") or name == "__version__"}
    assert stub_names == module_names


def test_stub_methods_exist_on_the_classes() -> None:
    for node in _stub_tree().body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(_core, node.name)
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name != "__init__":
                assert hasattr(cls, item.name), f"{node.name}.{item.name} is in the stub but not in _core"
