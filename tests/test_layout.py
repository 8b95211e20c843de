"""The package's layering: each folder imports only the folders below it (sftkit/__init__.py draws the arrows)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sftkit"
ALLOWED = {
    "io": set(),
    "llm": {"io"},
    "clean": {"io"},
    "docs": {"io"},
    "distill": {"io", "llm", "clean"},
    "model": {"io"},
    "report": {"io"},
    "evaluate": {"io", "llm", "clean", "model", "distill"},
    "testing": {"io", "llm", "clean", "docs", "distill", "model", "report"},
}


def sftkit_imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Top-level sftkit folders a module imports (absolute or relative)."""
    folder = path.relative_to(root).parts[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
                if node.module == "sftkit":
                    names = [f"sftkit.{a.name}" for a in node.names]
            elif node.level == 1:
                names = [f"sftkit.{folder}"]
            else:  # from ..x import y: x is a sibling folder
                names = [f"sftkit.{node.module or ''}"]
        for name in names:
            parts = name.split(".")
            if parts[0] == "sftkit" and len(parts) > 1 and parts[1] in ALLOWED:
                found.add(parts[1])
    found.discard(folder)
    return found


def test_every_module_sits_in_a_named_folder():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ALLOWED)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_point_down_only(folder):
    bad = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        extra = sftkit_imports(path) - ALLOWED[folder]
        if extra:
            bad[str(path.relative_to(PACKAGE))] = sorted(extra)
    assert bad == {}


def test_the_checker_sees_a_wrong_arrow(tmp_path):
    """A module of io that imports llm and distill is reported (so the check above can fail)."""
    fake = tmp_path / "sftkit"
    (fake / "io").mkdir(parents=True)
    (fake / "io" / "x.py").write_text("from sftkit.llm.client import AsyncChatClient\nfrom ..distill import judging\n")
    assert sftkit_imports(fake / "io" / "x.py", root=fake) == {"llm", "distill"}
