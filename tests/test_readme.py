"""README stays true to the tree: its `make help` block is what `make help` prints, every phony target has a help
line, and every script a user can run (top level, train/, infer/, scripts/, bench/) is named in README."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def readme_help_block() -> str:
    start = README.index("`make help` prints this list:")
    body = README[start:].split("```", 2)[1]
    return body.strip("\n")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_readme_help_block_is_make_help() -> None:
    out = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert readme_help_block() == out.strip("\n")


def test_every_phony_target_has_help() -> None:
    phony = {t for line in re.findall(r"^\.PHONY:(.*)$", MAKEFILE, re.M) for t in line.split()}
    helped = set(re.findall(r"^([a-zA-Z_-]+):[^\n]*?## ", MAKEFILE, re.M))
    assert phony, "no .PHONY line found"
    assert sorted(phony - helped) == []
    assert sorted(helped - phony) == []


def test_every_script_is_named_in_readme() -> None:
    scripts = [*ROOT.glob("*.py"), *ROOT.glob("train/*.py"), *ROOT.glob("infer/*.py"), *ROOT.glob("scripts/*.py"),
               *ROOT.glob("bench/*.py"), *ROOT.glob("bench/*.sh")]
    missing = [str(p.relative_to(ROOT)) for p in scripts if p.name != "__init__.py" and p.name not in README]
    assert missing == []
