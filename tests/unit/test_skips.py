"""The lab's skip policy (wgdisco/lab/skips.py, the ``netns`` marker of tests/conftest.py); runs anywhere.

The lab itself, building real topologies: tests/netns/test_lab.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wgdisco.lab import NETNS_REASON, netns_problem, require_netns, require_tool, skip_or_fail

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------- skip/fail policy


def test_skip_or_fail_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WGDISCO_REQUIRE_NETNS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="sudo make test"):
        skip_or_fail(NETNS_REASON)


def test_skip_or_fail_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WGDISCO_REQUIRE_NETNS", "1")
    with pytest.raises(pytest.fail.Exception, match="sudo make test"):
        skip_or_fail(NETNS_REASON)


@pytest.mark.parametrize("required", [False, True])
def test_require_netns_as_non_root(monkeypatch: pytest.MonkeyPatch, required: bool) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    if required:
        monkeypatch.setenv("WGDISCO_REQUIRE_NETNS", "1")
    else:
        monkeypatch.delenv("WGDISCO_REQUIRE_NETNS", raising=False)
    assert "not running as root" in (netns_problem() or "")
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match=r"needs root and network namespaces \(run as root: sudo make test\)"):
        require_netns()


@pytest.mark.parametrize("required", [False, True])
def test_require_tool(monkeypatch: pytest.MonkeyPatch, required: bool) -> None:
    monkeypatch.setenv("WGDISCO_REQUIRE_NETNS", "1" if required else "0")
    assert require_tool("sh").endswith("/sh")
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match="no-such-tool-xyz"):
        require_tool("no-such-tool-xyz")


MARKED = """
import pytest

@pytest.mark.netns
def test_needs_netns():
    pass
"""


@pytest.mark.parametrize("required", [False, True])
def test_netns_marker_without_privileges(tmp_path: Path, required: bool) -> None:
    """End to end: a root pytest run without CAP_SYS_ADMIN cannot `ip netns add`."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        skip_or_fail("needs root (to drop capabilities) and setpriv")
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_marked.py").write_text(MARKED)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1",
               WGDISCO_REQUIRE_NETNS="1" if required else "0")
    cmd = ["setpriv", "--bounding-set=-sys_admin,-net_admin", "--inh-caps=-all", "--",
           sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60).stdout
    assert "needs root and network namespaces (run as root: sudo make test)" in out, out
    assert ("1 error" if required else "1 skipped") in out, out


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_compiled_datapath_skips_or_fails(required: bool) -> None:
    """tests/conftest.py's compiled_datapath: make test-fast without a compiler skips and says how to
    build it; CI (WGDISCO_REQUIRE_NETNS=1) fails."""
    env = dict(os.environ, WGDISCO_FASTPATH_SO="/nonexistent/_fastpath.so", PYTHONDONTWRITEBYTECODE="1",
               WGDISCO_REQUIRE_NETNS="1" if required else "0")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q",
           "tests/unit/test_fastpath.py::test_bad_arguments_are_refused_not_crashes"]
    cp = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert "the compiled data path is not built" in cp.stdout and "WGDISCO_BUILD_FASTPATH=1 make venv" in cp.stdout
    assert (cp.returncode != 0 and "1 error" in cp.stdout) if required else \
        (cp.returncode == 0 and "1 skipped" in cp.stdout), cp.stdout
