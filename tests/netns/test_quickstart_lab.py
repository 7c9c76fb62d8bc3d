"""docs/quickstart.md's mesh section, run as written on two "machines".

A machine here is a network namespace plus a private mount and UTS namespace (host names alice
and bob) in which /etc/wireguard, /etc/hosts, /var/lib and /run are the test's own: the commands
use the real paths the document names (``/etc/wireguard/mesh0.conf``, interface ``mesh0``)
without touching this machine's, and two machines' ``mesh0`` never meet in /run/wireguard.
Each command of the section's ``sh`` blocks runs through ``sh -c`` as written, ``wgdisco``
being the checkout's (the install is tested in test_install_lab.py); the ``ini`` block is the
file, with the key ``wgdisco genmesh`` printed in place of its placeholder.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest

from wgdisco.lab import Lab, Proc, require_tool
from wgdisco.lab.netns import Host

pytestmark = pytest.mark.netns
DOC = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
PLACEHOLDER = "<the key wgdisco genmesh printed>"
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"


def mesh_section() -> tuple[list[list[str]], str]:
    """(the commands of each sh block, the ini block) of '## A mesh: one file on every machine'."""
    text = DOC.read_text()
    section = text.split("\n## A mesh: one file on every machine\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    commands = [[line.split("#", 1)[0].strip() for line in body.splitlines() if line.split("#", 1)[0].strip()]
                for kind, body in blocks if kind == "sh"]
    ini = [body for kind, body in blocks if kind == "ini"]
    assert len(commands) == 2 and len(ini) == 1, blocks
    return commands, ini[0]


class Machine:
    """A namespace host with its own /etc/wireguard, /etc/hosts, /var/lib, /run and host name."""

    def __init__(self, lab: Lab, host: Host, name: str) -> None:
        self.host, self.name = host, name
        root = lab.logdir / f"machine-{name}"
        (root / "wireguard").mkdir(parents=True)
        (root / "wireguard").chmod(0o700)
        self.etc_wireguard = root / "wireguard"
        self.hosts = root / "hosts"
        self.hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n")
        setup = " && ".join([
            f"hostname {name}",
            f"mount --bind {shlex.quote(str(self.etc_wireguard))} /etc/wireguard",
            f"mount --bind {shlex.quote(str(self.hosts))} /etc/hosts",
            "mount -t tmpfs -o mode=0755 tmpfs /var/lib",
            "mount -t tmpfs -o mode=0755 tmpfs /run",
            "echo ready",
            "exec sleep infinity",  # holds the namespaces; the commands enter them (nsenter)
        ])
        self.holder = host.popen(["unshare", "--mount", "--propagation", "private", "--uts", "sh", "-c", setup],
                                 name=f"machine-{name}")
        self.holder.wait_for(r"^ready$", timeout=10)

    def argv(self, command: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-u", "sh", "-c", command]

    def run(self, command: str, check: bool = True):
        return self.host.run(self.argv(command), check=check, env={"PATH": PATH})

    def start(self, command: str) -> Proc:
        """A foreground command in the background (``exec``: the shell is replaced, signals reach it)."""
        return self.host.popen(self.argv(f"exec {command}"), name=f"{self.name}-{command.split()[1]}",
                               env={"PATH": PATH})


def test_the_quickstart_mesh_commands_work_as_written(lab: Lab) -> None:
    require_tool("nsenter")
    blocks, ini = mesh_section()
    (genmesh,), on_every_machine = blocks
    assert genmesh == "wgdisco genmesh" and PLACEHOLDER in ini
    chmod, up, status, ping = on_every_machine
    assert up.startswith("wgdisco up ") and status.startswith("wgdisco status") and ping.startswith("ping ")

    lan = lab.lan("lan")
    machines = {}
    for i, name in enumerate(("alice", "bob"), start=1):
        host = lab.host(name)
        lab.attach(host, lan, f"10.1.0.{i}/24", f"fd00:1::{i}/64")
        machines[name] = Machine(lab, host, name)
    alice, bob = machines["alice"], machines["bob"]

    key = alice.run(genmesh).stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key), key
    config = ini.replace(PLACEHOLDER, key)
    conf_path = re.search(r"`(/etc/wireguard/\S+\.conf)`", DOC.read_text().split("## A mesh", 1)[1]).group(1)
    daemons = {}
    start = time.monotonic()
    for m in (alice, bob):
        (m.etc_wireguard / Path(conf_path).name).write_text(config)  # "the same file on every machine"
        m.run(chmod)
        daemons[m.name] = m.start(up)
    for m in (alice, bob):
        daemons[m.name].wait_for(r"interface mesh0 up:", timeout=30, stream="stderr")
    # `ping -c 3 bob` on alice, and alice's name on bob: retried until the mesh has formed
    for m, other in ((alice, "bob"), (bob, "alice")):
        command = ping if m is alice else ping.replace("bob", other)
        deadline = time.monotonic() + 20
        while m.run(command, check=False).returncode != 0:
            assert time.monotonic() < deadline, f"{command!r} on {m.name} fails\n{daemons[m.name].stderr()}"
    print(f"quickstart mesh: both pings by name {time.monotonic() - start:.2f} s after the first `wgdisco up`")
    shown = alice.run(status).stdout
    assert "interface: mesh0" in shown and "mesh: " in shown and "(mesh)" in shown, shown
    assert "mesh names: bob" in shown, shown
    assert key not in shown and key not in daemons["alice"].stderr()
    for proc in daemons.values():
        assert proc.stop(grace=5.0) == 0, proc.stderr()
        assert "Traceback" not in proc.stderr()
