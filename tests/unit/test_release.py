"""The version in one place: ``wgdisco.__version__``; pyproject.toml and CHANGELOG.md follow it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import wgdisco

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_reads_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "wgdisco.__version__"}


def test_changelog_starts_with_this_version() -> None:
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings and headings[0] == wgdisco.__version__, headings[:1]


def test_no_second_copy_of_the_version_in_the_package() -> None:
    literal = re.compile(rf"[\"']{re.escape(wgdisco.__version__)}[\"']")
    copies = [str(p.relative_to(ROOT)) for p in (ROOT / "wgdisco").rglob("*.py") if literal.search(p.read_text())]
    assert copies == ["wgdisco/__init__.py"], copies
