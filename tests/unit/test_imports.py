"""The layering rules of ../shared/ARCHITECTURE.md, enforced on the source.

- wgdisco/proto/*: pure cores. No sockets, event loops, threads, clocks, or the
  libraries that do I/O.
- wgdisco/io/*: one shell per real thing. A shell imports no other shell and
  not the daemon or the CLI.
- The node core (proto/node.py) imports only proto/ and errors; config.py imports no shell;
  no module but the CLI imports the daemon; the daemon's modules import each other without a cycle.
- No object reaches into another's private attributes: ``x._name`` only for ``self``/``cls``.
- wgdisco/lab/*: the namespace lab, shipped for `wgdisco demo`. Only the demo
  imports it (and the tests); it reaches the daemon only through its public
  ``Tunnel`` (run_tunnel.py, an entry point like the CLI).
- wgdisco/sim/*: the in-memory internet (issue 26). Pure like proto (no sockets, event loops,
  threads or clocks; seeded ``random`` is allowed, dnspython only to build messages), drives
  proto cores only, and nothing in the package imports it (the tests and bench/ do).
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


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved against the
    package path of ``path`` under ``root``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
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


def shell_violations(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    own = f"wgdisco.io.{path.stem}"
    return {
        m for m in imported_modules(path, root)
        if (m.startswith("wgdisco.io.") and not m.startswith(own))
        or m.split(".")[:2] in (["wgdisco", "daemon"], ["wgdisco", "cli"])
    }


def test_shells_import_no_other_shell() -> None:
    # One test over all shells, so that it runs (and passes) before any shell exists.
    bad = {p.name: sorted(shell_violations(p)) for p in files("io") if p.name != "__init__.py"}
    bad = {name: mods for name, mods in bad.items() if mods}
    assert not bad, f"a shell never imports another shell or the daemon: {bad}"


def own_imports(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """The wgdisco modules (not names inside them) that ``path`` imports."""
    modules = {m for m in imported_modules(path, root) if m.split(".")[0] == "wgdisco"}
    base = root / "wgdisco"
    return {m for m in modules if (base.parent / (m.replace(".", "/") + ".py")).is_file()
            or (base.parent / m.replace(".", "/") / "__init__.py").is_file()}


def test_node_core_imports_only_proto() -> None:
    bad = {m for m in own_imports(PACKAGE / "proto" / "node.py")
           if not m.startswith("wgdisco.proto") and m != "wgdisco.errors"}
    assert not bad, f"proto/node.py imports {sorted(bad)}: the node core joins pure cores only"


def test_config_imports_no_shell() -> None:
    bad = {m for m in own_imports(PACKAGE / "config.py") if m.startswith("wgdisco.io")}
    assert not bad, f"config.py imports {sorted(bad)}: parsing a config is pure"


def daemon_importers(root: Path = PACKAGE.parent) -> set[str]:
    out = set()
    for path in sorted((root / "wgdisco").rglob("*.py")):
        rel = path.relative_to(root / "wgdisco").as_posix()
        # The CLI runs the daemon, and the daemon's own modules import each other. lab/run_tunnel.py is
        # the other entry point: it runs a daemon with test timings inside a lab host. userspace.py is
        # the entry point `wgdisco-userspace` (wireguard-go's command line, for wg-quick): it runs one too.
        if rel in ("cli.py", "lab/run_tunnel.py", "userspace.py") or rel.startswith("daemon/"):
            continue
        if any(m == "wgdisco.daemon" or m.startswith("wgdisco.daemon.") for m in imported_modules(path, root)):
            out.add(rel)
    return out


def test_only_the_cli_imports_the_daemon() -> None:
    assert not daemon_importers(), f"{sorted(daemon_importers())} import the daemon (only the CLI may)"


def import_cycle(modules: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``{module: modules it imports}``, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(modules.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(modules):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_in_the_package() -> None:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in own_imports(path) if m != name and not m.endswith("__init__")}
        graph[name] -= {name.rsplit(".", 1)[0]}  # a module may import its own package
    assert import_cycle(graph) is None, f"import cycle: {' -> '.join(import_cycle(graph) or [])}"


def private_reaches(path: Path) -> list[str]:
    """``x._name`` where x is not ``self`` or ``cls``: one object in another's private state."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_no_module_reaches_into_private_attributes() -> None:
    bad = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in private_reaches(path)]
    assert not bad, "private attributes of another object: " + "; ".join(bad)


def test_the_new_checks_can_fail(tmp_path: Path) -> None:
    pkg = tmp_path / "wgdisco"
    (pkg / "proto").mkdir(parents=True)
    (pkg / "io").mkdir()
    for f in ("__init__.py", "proto/__init__.py", "io/__init__.py", "daemon.py", "io/udp.py", "cli.py"):
        (pkg / f).write_text("")
    (pkg / "proto" / "node.py").write_text("from wgdisco.io import udp\nfrom . import keys\n")
    (pkg / "proto" / "keys.py").write_text("")
    assert own_imports(pkg / "proto" / "node.py", tmp_path) == {
        "wgdisco.io", "wgdisco.io.udp", "wgdisco.proto", "wgdisco.proto.keys"}
    (pkg / "discovery.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from wgdisco.daemon import X\n")
    assert daemon_importers(tmp_path) == {"discovery.py"}
    (pkg / "lab").mkdir()
    for f in ("lab/run_tunnel.py", "lab/netns.py", "daemon.py"):  # only the entry point is exempt
        (pkg / f).write_text("from wgdisco.daemon import Tunnel\n")
    assert daemon_importers(tmp_path) == {"discovery.py", "lab/netns.py", "daemon.py"}
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None
    (pkg / "nat.py").write_text("def f(tunnel):\n    tunnel._sendto(1)\n    self._ok = 1\n")
    assert private_reaches(pkg / "nat.py") == ["nat.py:2: tunnel._sendto"]


def test_checker_catches_violations(tmp_path: Path) -> None:
    # The rule must be able to fail: a planted bad import is seen, relative imports resolved.
    (tmp_path / "wgdisco" / "proto").mkdir(parents=True)
    (tmp_path / "wgdisco" / "io").mkdir()
    fake = tmp_path / "wgdisco" / "proto" / "_planted_for_test.py"
    fake.write_text("import time\nfrom ..io import tun\nfrom . import keys\n")
    names = imported_modules(fake, tmp_path)
    assert "time" in names and "wgdisco.io.tun" in names and "wgdisco.proto.keys" in names
    shell = tmp_path / "wgdisco" / "io" / "_planted_for_test.py"
    shell.write_text("from wgdisco.io import udp\nfrom . import _planted_for_test\nimport wgdisco.daemon\n")
    assert shell_violations(shell, tmp_path) == {"wgdisco.io.udp", "wgdisco.daemon"}


def imports_lab(path: Path) -> bool:
    return any(m == "wgdisco.lab" or m.startswith("wgdisco.lab.") for m in imported_modules(path))


SIM_FORBIDDEN = PROTO_FORBIDDEN - {"random", "dns"}
SIM_DNS_ALLOWED = ("dns.exception", "dns.message", "dns.name", "dns.rdata", "dns.rdataclass", "dns.rdatatype", "dns.rdtypes",
                   "dns.rrset", "dns.flags")


def sim_violations(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """What a simulator module may not import: I/O, clocks, dnspython's resolvers, the shells,
    the daemon, the CLI, the lab, the tools."""
    out = set()
    for m in imported_modules(path, root):
        top = m.split(".")[0]
        if top in SIM_FORBIDDEN or (top == "dns" and m != "dns" and not m.startswith(SIM_DNS_ALLOWED)):
            out.add(m)
        if m.startswith(("wgdisco.io", "wgdisco.daemon", "wgdisco.cli", "wgdisco.lab", "wgdisco.tools")):
            out.add(m)
    return out


@pytest.mark.parametrize("path", files("sim"), ids=lambda p: p.name)
def test_the_simulator_is_pure(path: Path) -> None:
    bad = sim_violations(path)
    assert not bad, f"sim/{path.name} imports {sorted(bad)}: the simulator runs cores on a fake clock"


def test_the_simulator_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "wgdisco" / "sim").mkdir(parents=True)
    planted = tmp_path / "wgdisco" / "sim" / "_planted_for_test.py"
    planted.write_text("import random\nimport dns.message\nimport dns.asyncresolver\nimport socket\n"
                       "from wgdisco.io import udp\nfrom wgdisco.proto import node\n")
    assert sim_violations(planted, tmp_path) == {"dns.asyncresolver", "socket", "wgdisco.io", "wgdisco.io.udp"}


def test_nothing_in_the_package_imports_the_simulator() -> None:
    users = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                   if p.relative_to(PACKAGE).parts[0] != "sim"
                   and any(m == "wgdisco.sim" or m.startswith("wgdisco.sim.") for m in imported_modules(p)))
    assert not users, f"only the tests and bench/ run the simulator: {users}"


def test_only_the_demo_imports_the_lab() -> None:
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if p.relative_to(PACKAGE).parts[0] != "lab" and imports_lab(p)}
    assert users == {"demo.py"}, f"the daemon's code never imports wgdisco.lab: {sorted(users - {'demo.py'})}"


def test_the_lab_uses_only_the_daemons_tunnel() -> None:
    used = {m for p in files("lab") for m in imported_modules(p) if m.split(".")[:2] == ["wgdisco", "daemon"]}
    assert used <= {"wgdisco.daemon", "wgdisco.daemon.Tunnel"}, f"the lab imports daemon internals: {sorted(used)}"


# Every module of the package sits in one layer with its rule above (issue 22): a new top-level
# module must be placed (and given a rule) before it can land.
LAYERS = {
    "proto": "pure cores (test_proto_is_pure, test_node_core_imports_only_proto)",
    "io": "one shell per real thing (test_shells_import_no_other_shell)",
    "daemon": "wires cores to shells (test_no_import_cycle_in_the_package)",
    "lab": "the namespace lab (only the demo and the tests import it)",
    "tools": "commands without a daemon (netcheck, rendezvous): run by the CLI only",
    "sim": "the in-memory internet (test_the_simulator_is_pure): run by the tests and bench/ only",
}
ENTRY_POINTS = {"__init__.py", "__main__.py", "cli.py", "userspace.py", "demo.py", "config.py", "errors.py"}


def layer_of(rel: str) -> str | None:
    top = rel.split("/")[0]
    if "/" in rel:
        return top if top in LAYERS else None
    return "entry" if rel in ENTRY_POINTS else None


def test_every_module_has_a_layer() -> None:
    unplaced = [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.rglob("*.py"))
                if layer_of(p.relative_to(PACKAGE).as_posix()) is None]
    assert not unplaced, f"modules in no layer (place them, with a rule): {unplaced}"
    assert layer_of("discovery.py") is None and layer_of("daemon/discovery.py") == "daemon"  # the check can fail


def test_tools_are_run_by_the_cli_only() -> None:
    users = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                   if not p.relative_to(PACKAGE).as_posix().startswith("tools/")
                   and any(m.startswith("wgdisco.tools") for m in imported_modules(p)))
    assert users == ["cli.py"], users


def test_config_and_errors_import_no_daemon_and_no_shell() -> None:
    for name in ("config.py", "errors.py"):
        bad = {m for m in own_imports(PACKAGE / name) if m.startswith(("wgdisco.io", "wgdisco.daemon"))}
        assert not bad, f"{name} imports {sorted(bad)}"
