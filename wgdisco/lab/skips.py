"""Skip policy for tests that need root, network namespaces or external tools.

By default a missing capability skips the test.  With ``WGDISCO_REQUIRE_NETNS=1``
(CI, ``sudo make test``) the same condition fails the test instead, so an
environment that silently cannot run the lab is noticed.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from typing import NoReturn

NETNS_REASON = "needs root and network namespaces (run as root: sudo make test)"
REQUIRE_ENV = "WGDISCO_REQUIRE_NETNS"


def netns_required() -> bool:
    """True when missing prerequisites must fail rather than skip."""
    return os.environ.get(REQUIRE_ENV) == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """``pytest.skip(reason)``, or ``pytest.fail(reason)`` under ``WGDISCO_REQUIRE_NETNS=1``."""
    import pytest

    if netns_required():
        pytest.fail(f"{reason} [{REQUIRE_ENV}=1 turns this skip into a failure]", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _probe_netns() -> str | None:
    """Try to create and delete a namespace once per process; the error or None."""
    name = f"wgd{secrets.token_hex(3)}-probe"  # matches the lab pattern: cleanup finds leftovers
    try:
        add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns add` failed: {e}"
    if add.returncode != 0:
        return f"`ip netns add` failed: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None


def netns_problem() -> str | None:
    """Why the namespace lab cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return f"not running as root (euid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not found"
    return _probe_netns()


def require_netns() -> None:
    """Skip (or fail, see module doc) unless root and ``ip netns`` work."""
    if (problem := netns_problem()) is not None:
        skip_or_fail(f"{NETNS_REASON}: {problem}")


def require_tool(name: str) -> str:
    """The path of executable ``name``; skip (or fail) if it is not installed."""
    sbin = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))
    path = shutil.which(name) or shutil.which(name, path=sbin)
    if path is None:
        skip_or_fail(f"needs the {name!r} program (not found in PATH or sbin)")
    return path
