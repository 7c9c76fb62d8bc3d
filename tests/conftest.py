"""Shared pytest setup: the ``netns`` marker, its skip policy, the ``lab`` fixture, the layout by kind.

tests/unit/ holds the tests that need neither root nor namespaces (pure, in memory, loopback);
tests/netns/ the ``netns`` ones.  A test in the wrong folder is a collection error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `tests.*` helpers (tests.schema_check) are imported as a package from the repository root, also under
# a bare `pytest`; the lab itself is `wgdisco.lab`, part of the installed package.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from wgdisco.lab import Lab, require_netns, skip_or_fail  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "netns: needs root and network namespaces; skipped otherwise "
        "(a failure instead when WGDISCO_REQUIRE_NETNS=1)",
    )
    config.addinivalue_line(
        "markers",
        "background: waits most of its time on purpose and measures only its own processes; "
        "`make test` (tests/run_suite.py) runs these in a second pytest beside the others",
    )
    config.addinivalue_line(
        "markers",
        "last: measures latency or CPU under a flood it makes: runs after every other test of its "
        "pytest (`make test`'s runs beside it are done or idle by then, so their daemons starting "
        "do not show up as the flooded daemon's stalls)",
    )
    config.addinivalue_line(
        "markers",
        "quarter_hour: waits about 15 minutes on purpose; `make test` (tests/run_suite.py) runs it "
        "in a pytest of its own beside the others",
    )


_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        path = Path(str(item.path)).resolve()
        marked = item.get_closest_marker("netns") is not None
        if path.is_relative_to(_HERE / "unit") and marked:
            misplaced.append(f"{item.nodeid}: marked netns, belongs in tests/netns/")
        elif path.is_relative_to(_HERE / "netns") and not marked:
            misplaced.append(f"{item.nodeid}: not marked netns, belongs in tests/unit/ (or mark it)")
    if misplaced:
        raise pytest.UsageError("tests in the wrong folder:\n  " + "\n  ".join(misplaced))
    items[:] = [i for i in items if i.get_closest_marker("last") is None] + \
        [i for i in items if i.get_closest_marker("last") is not None]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns"):
        require_netns()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh namespace lab, always torn down (also after failures); its logs are kept when
    ``WGDISCO_KEEP_LOGS`` is set."""
    require_netns()
    lab = Lab(keep_logs=bool(os.environ.get("WGDISCO_KEEP_LOGS")))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def compiled_datapath() -> object:
    """The compiled data path (wgdisco/io/_fastpath.c), for the tests that drive it.

    Where it is not built (no compiler: ``make test-fast`` as an ordinary user) the test skips and
    says how to build it; under WGDISCO_REQUIRE_NETNS=1 (.ci/run, which also sets
    WGDISCO_BUILD_FASTPATH=1 so that ``make venv`` fails when the build does) it fails instead.
    """
    from wgdisco.daemon import fastpath

    module, why_not = fastpath.load_module()
    if module is None:
        skip_or_fail(f"the compiled data path is not built ({why_not}); build it with "
                     "`rm -f .venv/.installed && WGDISCO_BUILD_FASTPATH=1 make venv` "
                     "(needs gcc, python3-dev and libssl-dev: make system-deps)")
    return module
