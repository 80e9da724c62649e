"""Each package has one errors module: one root, a transient and a permanent family, nothing raised bare."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package -> (root, its families); intent_contract's errors are all permanent (the input will never decode).
FAMILIES = {
    "edge_outbox": ("OutboxError", ("TransientError", "PermanentError")),
    "cloud_bridge": ("BridgeError", ("TransientError", "PermanentError")),
    "intent_contract": ("ContractError", ()),
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FAMILIES))
def test_every_error_belongs_to_a_family(package: str) -> None:
    root_name, family_names = FAMILIES[package]
    errors = importlib.import_module(f"{package}.errors")
    root = getattr(errors, root_name)
    families = tuple(getattr(errors, name) for name in family_names)
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert root in classes
    for cls in classes:
        if cls is root or cls in families:
            continue
        assert issubclass(cls, root), cls
        if families:
            assert sum(issubclass(cls, f) for f in families) == 1, f"{cls.__name__} is in no family, or in both"


@pytest.mark.parametrize("package", sorted(FAMILIES))
def test_errors_are_defined_only_in_the_errors_module(package: str) -> None:
    """A public exception class elsewhere would be a second errors module (a private one is control flow)."""
    strays = []
    for path in modules(package):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    strays.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert strays == []


@pytest.mark.parametrize("package", sorted(FAMILIES))
def test_the_root_is_never_raised_itself(package: str) -> None:
    """Raised errors say whether a retry can help: the root alone does not."""
    root_name = FAMILIES[package][0]
    bare = []
    for path in modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id == root_name:
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bare == []
