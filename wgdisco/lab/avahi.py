"""Avahi (the reference mDNS responder) in a lab host, with a private system bus.

avahi-daemon talks to its clients (avahi-browse, avahi-publish) over the D-Bus
system bus, whose socket lives at a fixed path (/run/dbus/system_bus_socket).
So that nothing touches the machine's own /run, the daemon runs in a private
mount namespace (``unshare -m``, propagation private) with a tmpfs over /run:
there it starts its own ``dbus-daemon --system`` and then execs
``avahi-daemon`` (no chroot, no privilege drop, one interface, no reflector,
no wide area).  Clients join that mount namespace with ``nsenter -m`` (and the
host's network namespace through ``Host.run``/``Host.popen``).

The lab's teardown kills everything in the host's namespace; the tmpfs goes
away with the last process of the mount namespace.

    avahi = Avahi(host, "v3a").start()
    avahi.run(["avahi-browse", "-rpt", "_wireguard._udp"])
    pub = avahi.popen(["avahi-publish", "-s", label, "_wireguard._udp", "51820", "txtvers=1"])
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from .netns import Cmd, Host, LabError, Proc, argv_of
from .skips import require_tool

STARTED = "Server startup complete"

CONF = """\
[server]
host-name={host_name}
use-ipv4=yes
use-ipv6=yes
allow-interfaces={ifname}
allow-point-to-point=yes
enable-dbus=yes
disallow-other-stacks=no
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
publish-hinfo=no
publish-workstation=no
publish-aaaa-on-ipv4=yes
publish-a-on-ipv6=no

[reflector]
enable-reflector=no

[rlimits]
"""


def require_avahi() -> None:
    """Skip (or fail under WGDISCO_REQUIRE_NETNS=1) unless Avahi and its tools are installed."""
    for tool in ("avahi-daemon", "avahi-browse", "avahi-publish", "dbus-daemon", "unshare", "nsenter"):
        require_tool(tool)


class Avahi:
    """``avahi-daemon`` + ``dbus-daemon --system`` in ``host``, bound to ``ifname`` only."""

    def __init__(self, host: Host, ifname: str, *, host_name: str | None = None) -> None:
        """``ifname`` may be a tunnel (point to point: allowed, as docs/mesh.md tells users to)."""
        self.host = host
        self.ifname = ifname
        self.host_name = host_name or f"{host.lab.prefix}{host.name}".replace("_", "-")
        self.proc: Proc | None = None

    def start(self, timeout: float = 15.0) -> Avahi:
        """Start dbus and avahi; returns once Avahi reports "Server startup complete"."""
        conf = self.host.lab.logdir / f"avahi-{self.host.name}.conf"
        conf.write_text(CONF.format(host_name=self.host_name, ifname=self.ifname))
        avahi_daemon = require_tool("avahi-daemon")
        script = "\n".join(
            [
                "set -e",
                "mount -t tmpfs -o mode=0755 wgdisco-lab-run /run",
                "mkdir -p /run/dbus /run/avahi-daemon",
                "dbus-daemon --system --fork",
                f"exec {shlex.quote(avahi_daemon)} --no-chroot --no-drop-root --no-rlimits"
                f" --no-proc-title -f {shlex.quote(str(conf))}",
            ]
        )
        # ip netns exec, unshare (no --fork) and `exec` all keep the pid: proc.pid is avahi-daemon
        self.proc = self.host.popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            name=f"avahi-{self.host.name}",
        )
        self.proc.wait_for(STARTED, timeout=timeout, stream="stderr")
        return self

    def _enter(self, cmd: Cmd) -> list[str]:
        if self.proc is None or not self.proc.alive():
            raise LabError(f"avahi in {self.host.name} is not running")
        return ["nsenter", "-t", str(self.proc.pid), "-m", "--", *argv_of(cmd)]

    def run(self, cmd: Cmd, *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run an Avahi client (avahi-browse ...) against this daemon and wait for it."""
        return self.host.run(self._enter(cmd), check=check, timeout=timeout)

    def popen(self, cmd: Cmd, *, name: str | None = None) -> Proc:
        """Start an Avahi client (avahi-publish ...) in the background; the lab stops it."""
        return self.host.popen(self._enter(cmd), name=name or f"avahi-client-{Path(argv_of(cmd)[0]).name}")

    def log(self) -> str:
        """The daemon's stderr (its log, in the foreground)."""
        return "" if self.proc is None else self.proc.stderr()


def parse_browse(output: str) -> list[dict[str, object]]:
    """The resolved (``=``) lines of ``avahi-browse -p -r``, as dicts.

    ``=;IFACE;PROTO;NAME;TYPE;DOMAIN;HOST;ADDRESS;PORT;"txt" "txt"`` — names are
    escaped (``\\DDD``), TXT strings quoted and space-separated.
    """
    entries = []
    for line in output.splitlines():
        fields = line.split(";", 9)
        if len(fields) < 10 or fields[0] != "=":
            continue
        entries.append(
            {
                "iface": fields[1],
                "proto": fields[2],
                "name": unescape(fields[3]),
                "type": fields[4],
                "domain": fields[5],
                "host": fields[6],
                "address": fields[7],
                "port": int(fields[8]),
                "txt": parse_txt(fields[9]),
            }
        )
    return entries


def unescape(name: str) -> str:
    r"""Undo avahi's label escaping: ``\DDD`` (decimal byte) and ``\X``."""
    out = bytearray()
    i = 0
    raw = name.encode()
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit() and len(raw[i + 1 : i + 4]) == 3:
            out.append(int(raw[i + 1 : i + 4]))
            i += 4
        elif raw[i : i + 1] == b"\\" and i + 1 < len(raw):
            out.append(raw[i + 1])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="replace")


def parse_txt(field: str) -> list[str]:
    """``"a=1" "b=2"`` -> ``["a=1", "b=2"]`` (avahi-browse quotes each string)."""
    out = []
    i = 0
    while i < len(field):
        if field[i] != '"':
            i += 1
            continue
        j = i + 1
        buf = []
        while j < len(field) and field[j] != '"':
            if field[j] == "\\" and j + 1 < len(field):
                j += 1
            buf.append(field[j])
            j += 1
        out.append("".join(buf))
        i = j + 1
    return out
