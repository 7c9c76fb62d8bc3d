"""The layering rules of ../shared/ARCHITECTURE.md, enforced on the source.

- wgdisco/proto/*: pure cores. No sockets, event loops, threads, clocks, or the
  libraries that do I/O.
- wgdisco/io/*: one shell per real thing. A shell imports no other shell and
  not the daemon or the CLI.
- wgdisco/lab/*: the namespace lab, shipped for `wgdisco demo`. Only the demo
  imports it (and the tests); it reaches the daemon only through its public
  ``Tunnel`` (run_tunnel.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "wgdisco"
PROTO_FORBIDDEN = {
    "asyncio", "socket", "threading", "time", "select", "selectors", "multiprocessing",
    "subprocess", "zeroconf", "dns", "pyroute2", "random", "secrets",
}
IO_FORBIDDEN_OWN = {"wgdisco.daemon", "wgdisco.cli"}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def files(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).glob("*.py"))


@pytest.mark.parametrize("path", files("proto"), ids=lambda p: p.name)
def test_proto_is_pure(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.split(".")[0] in PROTO_FORBIDDEN}
    bad |= {m for m in imported_modules(path) if m.startswith(("wgdisco.io", "wgdisco.daemon", "wgdisco.cli"))}
    assert not bad, f"{path.name} imports {sorted(bad)}: proto cores take now/rng as arguments"


def shell_violations(path: Path) -> set[str]:
    own = f"wgdisco.io.{path.stem}"
    return {
        m for m in imported_modules(path)
        if (m.startswith("wgdisco.io.") and not m.startswith(own))
        or m.split(".")[:2] in (["wgdisco", "daemon"], ["wgdisco", "cli"])
    }


def test_shells_import_no_other_shell() -> None:
    # One test over all shells, so that it runs (and passes) before any shell exists.
    bad = {p.name: sorted(shell_violations(p)) for p in files("io") if p.name != "__init__.py"}
    bad = {name: mods for name, mods in bad.items() if mods}
    assert not bad, f"a shell never imports another shell or the daemon: {bad}"


def test_checker_catches_violations() -> None:
    # The rule must be able to fail: a planted bad import is seen, relative imports resolved.
    fake = PACKAGE / "proto" / "_planted_for_test.py"
    try:
        fake.write_text("import time\nfrom ..io import tun\nfrom . import keys\n")
        names = imported_modules(fake)
        assert "time" in names and "wgdisco.io.tun" in names and "wgdisco.proto.keys" in names
    finally:
        fake.unlink()
    shell = PACKAGE / "io" / "_planted_for_test.py"
    try:
        shell.write_text("from wgdisco.io import udp\nfrom . import _planted_for_test\nimport wgdisco.daemon\n")
        assert shell_violations(shell) == {"wgdisco.io.udp", "wgdisco.daemon"}
    finally:
        shell.unlink()


def imports_lab(path: Path) -> bool:
    return any(m == "wgdisco.lab" or m.startswith("wgdisco.lab.") for m in imported_modules(path))


def test_only_the_demo_imports_the_lab() -> None:
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if p.relative_to(PACKAGE).parts[0] != "lab" and imports_lab(p)}
    assert users == {"demo.py"}, f"the daemon's code never imports wgdisco.lab: {sorted(users - {'demo.py'})}"


def test_the_lab_uses_only_the_daemons_tunnel() -> None:
    used = {m for p in files("lab") for m in imported_modules(p) if m.split(".")[:2] == ["wgdisco", "daemon"]}
    assert used <= {"wgdisco.daemon", "wgdisco.daemon.Tunnel"}, f"the lab imports daemon internals: {sorted(used)}"
