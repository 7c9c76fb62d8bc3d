"""Lab objects: namespaces as hosts, veth links, bridge "switches", routers, NATs.

Theory of operation
-------------------
Every ``Lab`` picks a unique name prefix ``wgd`` + 6 hex digits + ``-`` (for
example ``wgd3fa91c-``) and creates all of its network namespaces with that
prefix: ``wgd3fa91c-alice``, ``wgd3fa91c-wan`` ...  Nothing is created in the
root namespace: veth pairs are made with ``ip -n A link add X type veth peer
name Y netns B``, so both ends are born inside their namespaces and interface
names (at most 15 characters) only have to be unique per namespace.  Automatic
names are ``v<N>a`` / ``v<N>b`` with ``N`` counting links within the lab.

* ``Host``   — one namespace: loopback up, forwarding off, IPv6 on, DAD off.
* ``Router`` — a ``Host`` with IPv4 and IPv6 forwarding on.
* ``Lan``    — a namespace holding a bridge ``br0`` (a switch); ``attach``
  plugs a host into it through a veth pair.
* NAT        — an nftables table ``inet wgdisco_nat`` in a router: masquerade
  on the WAN interface (``easy``: Linux keeps the source port when it is free,
  so the mapping is endpoint-independent; ``hard``: ``fully-random``, a new
  port per destination, i.e. a "symmetric" NAT; ``carrier``: an easy NAT whose
  inside is the carrier's 100.64.0.0/10 (RFC 6598), the outer half of a double
  NAT; ``firewall``: no NAT at all, only the stateful filter, the IPv6 home
  router).  Filtering is stateful (only replies come back in: ``ct state
  established,related accept``, IPv4 and IPv6), input is dropped except
  established, ICMP and the LAN side.  No hairpinning.

Processes started with ``Host.popen`` run in their own process group with
stdout/stderr going to files in the lab's log directory.  ``Lab.close()``
stops them (SIGTERM, then SIGKILL), kills anything else still living in the
lab's namespaces (daemons that forked away), deletes the namespaces (which
deletes their veths) and removes the log directory.  It is idempotent and is
also run from ``atexit`` and from a SIGTERM/SIGHUP handler; SIGINT unwinds as
``KeyboardInterrupt`` through ``with``/``finally`` blocks.  A small owner
file ``/run/wgdisco-lab/<prefix>owner`` (pid + start time) lets
``python -m wgdisco.lab.cleanup`` tell abandoned namespaces from live ones.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

PREFIX_RE = re.compile(r"^wgd[0-9a-f]{6}-")
OWNER_DIR = Path("/run/wgdisco-lab")
IFNAME_MAX = 15
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

Cmd = str | Sequence[str]
NatKind = Literal["easy", "hard", "carrier", "firewall"]
NAT_KINDS = ("easy", "hard", "carrier", "firewall")


class LabError(RuntimeError):
    """Something in the lab could not be set up or torn down."""


class LabUnsupported(LabError):
    """The kernel or the tools lack a feature (e.g. ``sch_netem``)."""


class CommandError(subprocess.CalledProcessError):
    """A command failed; unlike CalledProcessError, ``str()`` shows its output."""

    def __str__(self) -> str:
        cmd = shlex.join(self.cmd) if isinstance(self.cmd, list) else str(self.cmd)
        out = (self.stdout or "").strip()
        err = (self.stderr or "").strip()
        text = f"command {cmd!r} exited with {self.returncode}"
        if out:
            text += f"\n--- stdout ---\n{out}"
        if err:
            text += f"\n--- stderr ---\n{err}"
        return text


def argv_of(cmd: Cmd) -> list[str]:
    """A command as an argv list; a string is split like a shell would (no shell)."""
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def run_cmd(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture text output, raise ``CommandError`` on failure."""
    cp = subprocess.run(
        list(argv),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and cp.returncode != 0:
        raise CommandError(cp.returncode, list(argv), cp.stdout, cp.stderr)
    return cp


def with_env(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    """The current environment plus ``extra`` (None: just inherit)."""
    return None if extra is None else {**os.environ, **extra}


def is_v6(addr: str) -> bool:
    return ":" in addr


def bare_ip(addr: str) -> str:
    """``"198.51.100.1/24"`` -> ``"198.51.100.1"``."""
    return addr.split("/", 1)[0]


# ---------------------------------------------------------------- namespaces


def list_netns() -> list[str]:
    """Names from ``ip netns list`` (without the ``(id: N)`` suffix)."""
    out = run_cmd(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    cp = run_cmd(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in cp.stdout.split()] if cp.returncode == 0 else []


def kill_netns_processes(ns: str, grace: float = 1.0) -> None:
    """SIGTERM every process in ``ns``, then SIGKILL whatever is left after ``grace``."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while pids := [p for p in netns_pids(ns) if p != os.getpid()]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL and time.monotonic() > deadline + 2.0:
            break  # unkillable (D state?); deleting the name is still fine
        time.sleep(0.02)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL


def delete_netns(ns: str) -> None:
    """Kill the processes in a namespace and delete it; missing is fine."""
    kill_netns_processes(ns)
    cp = run_cmd(["ip", "netns", "del", ns], check=False)
    if cp.returncode != 0 and ns in list_netns():
        raise CommandError(cp.returncode, ["ip", "netns", "del", ns], cp.stdout, cp.stderr)


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: distinguishes a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_file(prefix: str) -> Path:
    return OWNER_DIR / f"{prefix}owner"


def owner_alive(prefix: str) -> bool:
    """True if the process that created the lab with this prefix still runs."""
    try:
        pid_s, start = owner_file(prefix).read_text().split()
    except (OSError, ValueError):
        return False
    return _proc_start_time(int(pid_s)) == start


# ------------------------------------------------------------------ processes


class Proc:
    """A background process in a namespace, output collected in two files."""

    def __init__(self, host: Host, argv: list[str], name: str, env: Mapping[str, str] | None) -> None:
        self.host = host
        self.argv = argv
        self.name = name
        self.out_path = host.lab.logdir / f"{name}.out"
        self.err_path = host.lab.logdir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own process group, killed as a whole
                env=with_env(env),
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout)

    def wait_for(self, pattern: str, timeout: float = 5.0, stream: str = "stdout") -> re.Match[str]:
        """Wait until ``pattern`` (a regex, multiline) shows up in the output."""
        regex = re.compile(pattern, re.MULTILINE)
        read = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive()  # checked before reading: no lost last words
            if m := regex.search(read()):
                return m
            if exited or time.monotonic() > deadline:
                why = f"exited with {self.returncode}" if exited else "timed out"
                raise LabError(
                    f"{self.name}: {pattern!r} not seen ({why})\n"
                    f"--- stdout ---\n{self.stdout()}\n--- stderr ---\n{self.stderr()}"
                )
            time.sleep(0.02)

    def stop(self, grace: float = 1.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds.

        Only while the leader is unreaped (so its pid cannot have been reused);
        group members that outlive it are found by the namespace sweep.
        """
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                return self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.popen.poll()

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} in {self.host.name}>"


# ---------------------------------------------------------------------- nodes


class Host:
    """A network namespace seen as a machine."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = lab.prefix + name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ns={self.ns}>"

    # -- running things
    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this namespace and wait for it (text output captured).

        ``env`` holds variables added to the inherited environment.
        """
        argv = ["ip", "netns", "exec", self.ns, *argv_of(cmd)]
        return run_cmd(argv, check=check, timeout=timeout, input=input, env=with_env(env))

    def popen(self, cmd: Cmd, *, name: str | None = None, env: Mapping[str, str] | None = None) -> Proc:
        """Start ``cmd`` in the background; the lab stops it on close.

        Output goes to ``<logdir>/<NN>-<name>.out|.err``; read it with
        ``Proc.stdout()`` / ``Proc.wait_for(regex)``.  ``env`` adds variables.
        """
        return self.lab.start_process(self, argv_of(cmd), name, env)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NS ARGS...``"""
        return run_cmd(["ip", "-n", self.ns, *args], check=check)

    def sysctl(self, *settings: str) -> None:
        """Set sysctls in this namespace, e.g. ``sysctl("net.ipv4.ip_forward=1")``."""
        self.run(["sysctl", "-q", "-w", *settings])

    # -- addresses and routes
    def add_addr(self, ifname: str, addr: str) -> None:
        """Add ``addr`` (with prefix length) to ``ifname``; IPv6 skips DAD."""
        if is_v6(addr):
            self.ip("-6", "addr", "add", addr, "dev", ifname, "nodad")
        else:
            self.ip("addr", "add", addr, "dev", ifname)

    def add_route(self, dst: str, via: str | None = None, dev: str | None = None, *, v6: bool | None = None) -> None:
        """``add_route("default", via="10.1.0.1")``; the family follows ``via``/``dst``."""
        if v6 is None:
            v6 = is_v6(dst) or (via is not None and is_v6(via))
        args = ["-6" if v6 else "-4", "route", "add", dst]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        self.ip(*args)

    def addresses(self, ifname: str | None = None) -> list[str]:
        """Global-scope addresses as ``"addr/len"`` (all interfaces or one)."""
        args = ["-j", "addr", "show"] + (["dev", ifname] if ifname else [])
        return [
            f"{a['local']}/{a['prefixlen']}"
            for link in json.loads(self.ip(*args).stdout or "[]")
            for a in link.get("addr_info", [])
            if a.get("scope") == "global"
        ]

    def operstate(self, ifname: str) -> str:
        """``"UP"``, ``"DOWN"``, ``"LOWERLAYERDOWN"``... as ``ip link`` reports it."""
        [link] = json.loads(self.ip("-j", "link", "show", "dev", ifname).stdout)
        return str(link.get("operstate", "UNKNOWN"))

    def ping(
        self, target: str, *, count: int = 1, wait: int = 2, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``ping -c COUNT -W WAIT`` (``-6`` for IPv6 targets); raises on loss if ``check``."""
        argv = ["ping", "-6" if is_v6(target) else "-4", "-n", "-c", str(count), "-W", str(wait), target]
        return self.run(argv, check=check, timeout=count * wait + 5)

    def set_forwarding(self, on: bool) -> None:
        v = "1" if on else "0"
        self.sysctl(f"net.ipv4.ip_forward={v}", f"net.ipv6.conf.all.forwarding={v}")


class Router(Host):
    """A host that forwards (IPv4 and IPv6)."""


class NatRouter(Router):
    """A router made by ``Lab.nat_router``: one LAN side, one WAN side, NAT."""

    def __init__(self, lab: Lab, name: str, kind: NatKind) -> None:
        super().__init__(lab, name)
        self.kind = kind
        self.lan_if = self.wan_if = ""  # interface names ("lan0", "wan0")
        self.lan_ip = self.wan_ip = ""  # IPv4 addresses without prefix length
        self.miniupnpd: Proc | None = None  # with Lab.nat_router(..., upnp=...)


class Lan(Host):
    """A switch: a namespace with bridge ``br0``; hosts join with ``Lab.attach``."""

    bridge = "br0"


# ------------------------------------------------------------------------ lab

_HOST_SYSCTLS = (
    "net.ipv4.ip_forward=0",
    "net.ipv6.conf.all.forwarding=0",
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)

_SWITCH_SYSCTLS = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")  # L2 only

NAT_TABLE = "wgdisco_nat"
_N = TypeVar("_N", bound=Host)


def nat_ruleset(wan_if: str, lan_ifs: Sequence[str], kind: NatKind, *, port_forwarding: bool = False,
                own_addr: str | None = None, stun_servers: Sequence[str] = ()) -> str:
    """The nftables script for a NAT router (IPv4 NAT, stateful v4+v6 filter); ``firewall``: the
    filter alone, no NAT.

    ``port_forwarding`` (a router running miniupnpd, lab/miniupnpd.py): forwarded connections
    that a DNAT rule made are accepted (miniupnpd's own table holds the DNAT rules); the
    router's own traffic from ``own_addr`` is not masqueraded (``fully-random`` would break
    miniupnpd's STUN check); and answers from ``stun_servers`` (from their other address and
    port too, RFC 3489 CHANGE-REQUEST) come in, so that the check can see it is not filtered.
    """
    if kind not in NAT_KINDS:
        raise ValueError(f"NAT kind must be one of {', '.join(NAT_KINDS)}, not {kind!r}")
    lans = ", ".join(json.dumps(i) for i in lan_ifs)
    masq = "masquerade fully-random" if kind == "hard" else "masquerade"
    extra_input = extra_forward = own = ""
    if port_forwarding:
        extra_forward = "\n        ct status dnat accept"
        if stun_servers:
            servers = ", ".join(stun_servers)
            extra_input = f"\n        iifname {json.dumps(wan_if)} ip saddr {{ {servers} }} udp sport {{ 3478, 3479 }} accept"
        if own_addr:
            own = f"ip saddr != {own_addr} "
    nat = "" if kind == "firewall" else f"""
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        meta nfproto ipv4 oifname {json.dumps(wan_if)} {own}{masq}
    }}"""
    return f"""
table inet {NAT_TABLE} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname "lo" accept
        iifname {{ {lans} }} accept
        meta l4proto {{ icmp, ipv6-icmp }} accept{extra_input}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname {{ {lans} }} oifname {json.dumps(wan_if)} accept{extra_forward}
    }}{nat}
}}
"""


class Lab:
    """A set of namespaces with a common prefix; use as a context manager."""

    def __init__(self, *, keep_logs: bool = False) -> None:
        self.prefix = f"wgd{secrets.token_hex(3)}-"
        self.keep_logs = keep_logs
        self.nodes: dict[str, Host] = {}
        self.procs: list[Proc] = []
        self._namespaces: list[str] = []
        self._links = 0
        self._closed = False
        self.logdir = Path(tempfile.mkdtemp(prefix=self.prefix))
        _register(self)
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        owner_file(self.prefix).write_text(f"{os.getpid()} {_proc_start_time(os.getpid())}\n")

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} nodes={list(self.nodes)}>"

    # -- nodes
    def _add_node(self, node: _N, sysctls: Sequence[str] = _HOST_SYSCTLS, *, forwarding: bool = False) -> _N:
        """Create ``node``'s namespace: loopback up, ``sysctls`` applied."""
        if self._closed:
            raise LabError("lab is closed")
        if not NAME_RE.match(node.name):
            raise ValueError(f"bad node name {node.name!r} (want {NAME_RE.pattern})")
        if node.name in self.nodes:
            raise ValueError(f"node {node.name!r} already exists")
        run_cmd(["ip", "netns", "add", node.ns])
        self._namespaces.append(node.ns)
        self.nodes[node.name] = node
        node.ip("link", "set", "lo", "up")
        node.sysctl(*sysctls)
        if forwarding:
            node.set_forwarding(True)
        return node

    def host(self, name: str) -> Host:
        """A new namespace: lo up, forwarding off, IPv6 on without DAD."""
        return self._add_node(Host(self, name))

    def router(self, name: str) -> Router:
        """A host with IPv4 and IPv6 forwarding on."""
        return self._add_node(Router(self, name), forwarding=True)

    def lan(self, name: str) -> Lan:
        """A switch namespace with bridge ``br0`` (no STP, no multicast snooping)."""
        lan = self._add_node(Lan(self, name), _SWITCH_SYSCTLS)
        lan.ip("link", "add", lan.bridge, "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
        lan.ip("link", "set", lan.bridge, "up")
        return lan

    # -- wiring
    def _veth(self, a: Host, b: Host, name_a: str | None, name_b: str | None) -> tuple[str, str]:
        if a is b:
            raise ValueError("cannot link a host to itself")
        self._links += 1
        name_a = name_a or f"v{self._links}a"
        name_b = name_b or f"v{self._links}b"
        for n in (name_a, name_b):
            if len(n) > IFNAME_MAX or not re.fullmatch(r"[A-Za-z0-9_.-]+", n):
                raise ValueError(f"bad interface name {n!r} (max {IFNAME_MAX} chars)")
        a.ip("link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", b.ns)
        return name_a, name_b

    def _up(self, *ends: tuple[Host, str], timeout: float = 5.0) -> None:
        """Bring interfaces up and wait for carrier on all of them.

        Addresses are added only after this: IPv6 joins the solicited-node
        multicast groups once the link is "ready", and a neighbour solicitation
        sent before the peer joined is lost (costing a 1 s retransmit).
        """
        for host, ifname in ends:
            host.ip("link", "set", ifname, "up")
        deadline = time.monotonic() + timeout
        for host, ifname in ends:
            while host.operstate(ifname) != "UP":
                if time.monotonic() > deadline:
                    raise LabError(f"{host.name}/{ifname} has no carrier after {timeout}s")
                time.sleep(0.005)

    @staticmethod
    def _add_addrs(host: Host, ifname: str, *addrs: str | None) -> None:
        for addr in addrs:
            if addr:
                host.add_addr(ifname, addr)

    def link(
        self,
        a: Host,
        b: Host,
        addr_a: str | None = None,
        addr_b: str | None = None,
        addr6_a: str | None = None,
        addr6_b: str | None = None,
        *,
        name_a: str | None = None,
        name_b: str | None = None,
    ) -> tuple[str, str]:
        """A veth pair between two hosts; returns (ifname in a, ifname in b)."""
        ia, ib = self._veth(a, b, name_a, name_b)
        self._up((a, ia), (b, ib))
        self._add_addrs(a, ia, addr_a, addr6_a)
        self._add_addrs(b, ib, addr_b, addr6_b)
        return ia, ib

    def attach(
        self, host: Host, lan: Lan, addr: str | None = None, addr6: str | None = None, *, ifname: str | None = None
    ) -> str:
        """Plug ``host`` into ``lan``; returns the host-side interface name."""
        ih, il = self._veth(host, lan, ifname, None)
        lan.ip("link", "set", il, "master", lan.bridge)
        self._up((lan, il), (host, ih))
        self._add_addrs(host, ih, addr, addr6)
        return ih

    # -- NAT and impairments
    def nat(self, router: Host, wan_if: str, lan_ifs: Sequence[str], kind: NatKind = "easy", **kw: Any) -> None:
        """Make ``router`` a NAT: masquerade on ``wan_if``, stateful filter (``kw``: nat_ruleset's)."""
        router.run(["nft", "-f", "-"], input=nat_ruleset(wan_if, lan_ifs, kind, **kw))

    def nat_router(
        self,
        name: str,
        *,
        lan: Lan,
        wan: Lan,
        lan_addr: str,
        wan_addr: str,
        lan_addr6: str | None = None,
        wan_addr6: str | None = None,
        kind: NatKind = "easy",
        upnp: Sequence[str] | None = None,
        upnp_natpmp: bool = True,
    ) -> NatRouter:
        """A router attached to ``lan`` (as ``lan0``) and ``wan`` (as ``wan0``), NAT on the WAN side.

        ``upnp``: the router runs miniupnpd (UPnP IGD, NAT-PMP and PCP; lab/miniupnpd.py), whose
        STUN check asks the STUN servers at these addresses (the first is asked); ``upnp_natpmp``
        False: UPnP IGD only (no NAT-PMP, no PCP). The lab stops it.
        LAN hosts still need ``add_route("default", via=router.lan_ip)``.
        """
        router = self._add_node(NatRouter(self, name, kind), forwarding=True)
        router.lan_if = self.attach(router, lan, lan_addr, lan_addr6, ifname="lan0")
        router.wan_if = self.attach(router, wan, wan_addr, wan_addr6, ifname="wan0")
        router.lan_ip, router.wan_ip = bare_ip(lan_addr), bare_ip(wan_addr)
        if upnp is None:
            self.nat(router, router.wan_if, [router.lan_if], kind)
            return router
        from .miniupnpd import start_miniupnpd

        self.nat(router, router.wan_if, [router.lan_if], kind, port_forwarding=True, own_addr=router.wan_ip,
                 stun_servers=list(upnp))
        router.miniupnpd = start_miniupnpd(router, stun_server=upnp[0], natpmp=upnp_natpmp)
        return router

    def netem(
        self, host: Host, ifname: str, *, delay_ms: float = 0, jitter_ms: float = 0, loss_pct: float = 0
    ) -> None:
        """Egress delay/loss on ``ifname`` with tc netem (``LabUnsupported`` if absent)."""
        args = ["tc", "qdisc", "replace", "dev", ifname, "root", "netem"]
        if delay_ms or jitter_ms:
            args += ["delay", f"{delay_ms}ms"] + ([f"{jitter_ms}ms"] if jitter_ms else [])
        if loss_pct:
            args += ["loss", f"{loss_pct}%"]
        cp = host.run(args, check=False)
        if cp.returncode != 0:
            if "unknown" in cp.stderr.lower():
                raise LabUnsupported(f"tc netem is not available in this kernel: {cp.stderr.strip()}")
            raise CommandError(cp.returncode, args, cp.stdout, cp.stderr)

    # -- processes
    def start_process(self, host: Host, argv: list[str], name: str | None, env: Mapping[str, str] | None) -> Proc:
        """A process on ``host`` that the lab owns (killed and reaped when the lab closes)."""
        if self._closed:
            raise LabError("lab is closed")
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", name or f"{host.name}-{Path(argv[0]).name}")
        proc = Proc(host, argv, f"{len(self.procs):02d}-{base}", env)
        self.procs.append(proc)
        return proc

    # -- teardown
    def namespaces(self) -> list[str]:
        """Namespaces created by this lab and not yet deleted."""
        return list(self._namespaces)

    def close(self) -> None:
        """Stop processes, delete namespaces, remove logs.  Idempotent."""
        if self._closed:
            return
        errors: list[str] = []
        for proc in self.procs:
            try:
                proc.stop()
            except Exception as e:  # keep going: the namespaces must go
                errors.append(f"{proc!r}: {e}")
        for ns in list(self._namespaces):
            try:
                delete_netns(ns)
                self._namespaces.remove(ns)
            except Exception as e:
                errors.append(f"{ns}: {e}")
        if errors:
            raise LabError("lab cleanup incomplete:\n" + "\n".join(errors))
        self._closed = True
        _unregister(self)
        owner_file(self.prefix).unlink(missing_ok=True)
        if not self.keep_logs:
            shutil.rmtree(self.logdir, ignore_errors=True)


# ------------------------------------------------- exit and signal safety net

_LIVE: list[Lab] = []
_LIVE_LOCK = threading.Lock()
_PREV_HANDLERS: dict[int, object] = {}
_HOOKED = False


def close_all_labs() -> None:
    """Close every lab still open in this process (best effort)."""
    with _LIVE_LOCK:
        labs = list(_LIVE)
    for lab in labs:
        try:
            lab.close()
        except Exception as e:  # noqa: BLE001 - last resort, report and go on
            print(f"wgdisco lab: cleanup of {lab.prefix} failed: {e}", file=sys.stderr)


def _on_signal(signum: int, frame: object) -> None:
    close_all_labs()
    prev = _PREV_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    atexit.register(close_all_labs)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        prev = signal.getsignal(sig)
        if prev in (signal.SIG_DFL, None):  # never override somebody else's handler
            _PREV_HANDLERS[sig] = signal.SIG_DFL
            signal.signal(sig, _on_signal)


def _register(lab: Lab) -> None:
    _install_hooks()
    with _LIVE_LOCK:
        _LIVE.append(lab)


def _unregister(lab: Lab) -> None:
    with _LIVE_LOCK:
        if lab in _LIVE:
            _LIVE.remove(lab)


def enter_netns(name: str) -> None:
    """Move the *calling thread* into network namespace ``name`` (setns(2)); for worker threads
    that run a shell (TUN, netlink) inside a lab host without a subprocess."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
