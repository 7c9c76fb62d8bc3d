"""Shared pytest setup: the ``netns`` marker, its skip policy, the ``lab`` fixture."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `tests.*` helpers (tests.schema_check) are imported as a package from the repository root, also under
# a bare `pytest`; the lab itself is `wgdisco.lab`, part of the installed package.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from wgdisco.lab import Lab, require_netns  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "netns: needs root and network namespaces; skipped otherwise "
        "(a failure instead when WGDISCO_REQUIRE_NETNS=1)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns"):
        require_netns()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh namespace lab, always torn down (also after failures)."""
    require_netns()
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
