"""The NAT matrix's cells in the lab: one "internet" and a site of each kind, two wgdisco nodes.

The internet is a WAN bridge, 203.0.113.0/24 and 2001:db8::/64, with a server host running stund
(203.0.113.10 and .11, RFC 5780 changed address) and Knot (203.0.113.53, 2001:db8::53) for
unicast DNS-SD. A site is one host behind one of:

- ``easy``: an nftables NAT that keeps ports (endpoint-independent mapping), stateful filter;
- ``hard``: ``masquerade fully-random`` (a new random port per destination, a "symmetric" NAT);
- ``mapped``: a hard NAT whose router runs miniupnpd (PCP, NAT-PMP and UPnP IGD; lab/miniupnpd.py),
  as tests/netns/test_portmap_lab.py builds it; the node keeps the default ``PortMapping = auto``;
- ``cgnat``: an easy home NAT behind an easy carrier NAT in 100.64.0.0/10 (a double NAT);
- ``v6fw``: IPv6 only, a router with a stateful firewall (``ct state established,related accept``)
  and no NAT, 2001:db8:<i>::/64;
- ``same``: the second host on the first site's LAN, behind the same easy NAT, which does not
  hairpin (a cell only against itself);
- ``wan``: a host on the internet itself, 203.0.113.3<i> and 2001:db8::3<i>, no NAT.

``pair(..., wan=PROFILES["home"])`` impairs every site's own link to the internet (the router's WAN
side, or the WAN host's link) with lab/wan.py's forwarder, as a home line would be: each way
on each site's line, so a path between two sites crosses two impaired lines (twice the delay
and about twice the loss), and one to the servers crosses one.

Every node runs with the documented defaults but for what a user must write: keys, addresses,
the STUN servers and the DNS-SD domain, nameserver and update key, and PersistentKeepalive = 25
(as for any peer behind NAT). Addresses only inside the lab (BRIEF: documentation ranges).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

from .knot import start_knot
from .netns import Host, Lab, Router
from .skips import require_tool
from .wan import Impaired, Profile, impair
from .wg import Node, keypair

DOMAIN = "wg.example.net"
STUN_A, STUN_B, KNOT, KNOT6 = "203.0.113.10", "203.0.113.11", "203.0.113.53", "2001:db8::53"
CELLS = ("easy", "hard", "mapped", "cgnat", "v6fw", "same", "wan")
CELLS_PENDING: dict[str, str] = {}  # cells that cannot be built yet, and why
V6_ONLY = {"v6fw"}
V4_ONLY = {"easy", "hard", "mapped", "cgnat", "same"}


def applicable(a: str, b: str) -> str | None:
    """None if the pair is a cell of the matrix, else why not."""
    if ("same" in (a, b)) and a != b:
        return "the same-NAT cell is only paired with itself"
    if (a in V6_ONLY and b in V4_ONLY) or (b in V6_ONLY and a in V4_ONLY):
        return "no address family in common (IPv6-only against IPv4-only)"
    for c in (a, b):
        if c in CELLS_PENDING:
            return CELLS_PENDING[c]
    return None


@dataclass
class Internet:
    lab: Lab
    wan: Host
    server: Host
    knot: object
    v6_routers: dict[int, Router] = field(default_factory=dict)
    wan_profile: Profile | None = None  # every site's line to the internet impaired with it
    impaired: dict[str, Impaired] = field(default_factory=dict)  # by the host whose line it is

    def _line(self, host: Host, ifname: str) -> None:
        """Impair ``host``'s link ``ifname`` to the WAN switch with ``wan_profile``, if any."""
        if self.wan_profile is not None:
            self.impaired[host.name] = impair(self.lab, host, ifname, self.wan, self.wan_profile)

    def nat_site(self, name: str, index: int, kind: str, *, upnp: bool = False) -> Host:
        """A host at 10.<index>.0.2 behind its own router (WAN 203.0.113.<index>); ``upnp``: the
        router runs miniupnpd, whose STUN check asks the lab's stund."""
        lan = self.lab.lan(f"l{name}")
        router = self.lab.nat_router(f"r{name}", lan=lan, wan=self.wan, lan_addr=f"10.{index}.0.1/24",
                                     wan_addr=f"203.0.113.{index}/24", kind=kind,  # type: ignore[arg-type]
                                     upnp=[STUN_A, STUN_B] if upnp else None)
        self._line(router, router.wan_if)
        host = self.lab.host(name)
        self.lab.attach(host, lan, f"10.{index}.0.2/24")
        host.add_route("default", via=f"10.{index}.0.1")
        return host

    def cgnat_site(self, name: str, index: int) -> Host:
        """A host at 10.<index>.0.2 behind an easy home NAT whose WAN side, 100.64.<index>.2, sits
        behind the carrier's easy NAT (RFC 6598 space), WAN address 203.0.113.<index>."""
        carrier_lan = self.lab.lan(f"c{name}")
        self.lab.nat_router(f"cr{name}", lan=carrier_lan, wan=self.wan, lan_addr=f"100.64.{index}.1/24",
                            wan_addr=f"203.0.113.{index}/24", kind="carrier")
        self._line(self.lab.nodes[f"cr{name}"], "wan0")
        lan = self.lab.lan(f"l{name}")
        home = self.lab.nat_router(f"r{name}", lan=lan, wan=carrier_lan, lan_addr=f"10.{index}.0.1/24",
                                   wan_addr=f"100.64.{index}.2/24", kind="easy")
        home.add_route("default", via=f"100.64.{index}.1")
        host = self.lab.host(name)
        self.lab.attach(host, lan, f"10.{index}.0.2/24")
        host.add_route("default", via=f"10.{index}.0.1")
        return host

    def v6_site(self, name: str, index: int) -> Host:
        """An IPv6-only host at 2001:db8:<index>::2 behind a stateful firewall without NAT (WAN
        2001:db8::<index>); the v6 sites route each other's prefixes through their routers."""
        lan = self.lab.lan(f"l{name}")
        router = self.lab.nat_router(f"r{name}", lan=lan, wan=self.wan, lan_addr=f"10.{index}.0.1/24",
                                     wan_addr=f"203.0.113.{index}/24", lan_addr6=f"2001:db8:{index}::1/64",
                                     wan_addr6=f"2001:db8::{index}/64", kind="firewall")
        self._line(router, router.wan_if)
        for j, other in self.v6_routers.items():
            router.add_route(f"2001:db8:{j}::/64", via=f"2001:db8::{j}")
            other.add_route(f"2001:db8:{index}::/64", via=f"2001:db8::{index}")
        self.v6_routers[index] = router
        self.server.add_route(f"2001:db8:{index}::/64", via=f"2001:db8::{index}")
        host = self.lab.host(name)
        self.lab.attach(host, lan, addr6=f"2001:db8:{index}::2/64")
        host.add_route("default", via=f"2001:db8:{index}::1", v6=True)
        return host

    def wan_host(self, name: str, index: int) -> Host:
        host = self.lab.host(name)
        ifname = self.lab.attach(host, self.wan, f"203.0.113.3{index}/24", f"2001:db8::3{index}/64")
        self._line(host, ifname)
        for j in self.v6_routers:
            host.add_route(f"2001:db8:{j}::/64", via=f"2001:db8::{j}")
        return host


def internet(lab: Lab, wan_profile: Profile | None = None) -> Internet:
    """The WAN bridge, stund on two addresses, Knot on IPv4 and IPv6 (``wan_profile``: the sites'
    lines are impaired, the servers' own link is not)."""
    require_tool("stund")
    wan = lab.lan("wan")
    server = lab.host("srv")
    ifname = lab.attach(server, wan, f"{STUN_A}/24", f"{KNOT6}/64")
    server.add_addr(ifname, f"{STUN_B}/24")
    server.add_addr(ifname, f"{KNOT}/24")
    stund = server.popen(["stund", "-v", "-h", STUN_A, "-a", STUN_B], name="stund")
    deadline = time.monotonic() + 10
    while f"{STUN_A}:3478" not in server.run(["ss", "-Hnlu"]).stdout:
        if not stund.alive() or time.monotonic() > deadline:
            raise RuntimeError("stund did not start: " + stund.stdout() + stund.stderr())
        time.sleep(0.05)
    knot = start_knot(server, [KNOT, KNOT6])
    return Internet(lab, wan, server, knot, wan_profile=wan_profile)


def site(net: Internet, kind: str, name: str, index: int, first: Host | None = None) -> Host:
    """A host of cell ``kind`` (``same``: a second host on ``first``'s LAN)."""
    if kind in ("easy", "hard"):
        return net.nat_site(name, index, kind)
    if kind == "mapped":
        require_tool("miniupnpd")
        return net.nat_site(name, index, "hard", upnp=True)
    if kind == "cgnat":
        return net.cgnat_site(name, index)
    if kind == "v6fw":
        return net.v6_site(name, index)
    if kind == "wan":
        return net.wan_host(name, index)
    if kind == "same":
        if first is None:
            return net.nat_site(name, index, "easy")
        host = net.lab.host(name)
        lan = net.lab.nodes[f"l{first.name}"]
        net.lab.attach(host, lan, f"10.1.0.{index + 1}/24")  # type: ignore[arg-type]
        host.add_route("default", via="10.1.0.1")
        return host
    raise ValueError(f"no lab cell {kind!r} ({CELLS_PENDING.get(kind, 'unknown')})")


def discovery(kind: str, net: Internet) -> dict[str, str]:
    """[Discovery] as a user of that cell writes it: STUN servers (IPv4 only: stund speaks IPv4),
    the domain, the nameserver the host can reach, the update key. Nothing else is set."""
    d = {"mDNS": "off", "Domain": DOMAIN, "UpdateKey": net.knot.update_key}  # type: ignore[attr-defined]
    if kind == "v6fw":
        d["Nameserver"] = KNOT6
    else:
        d["Nameserver"] = KNOT
        d["STUN"] = f"{STUN_A}:3478, {STUN_B}:3478"
    return d


def pair(lab: Lab, kind_a: str, kind_b: str, wan: Profile | None = None) -> tuple[Internet, Node, Node]:
    """Two nodes, a in a cell of ``kind_a`` and b in one of ``kind_b``, peers of each other
    without an Endpoint (found through Knot), not started; ``wan``: every site's line impaired."""
    why = applicable(kind_a, kind_b)
    if why is not None:
        raise ValueError(f"{kind_a} x {kind_b}: {why}")
    net = internet(lab, wan)
    ha = site(net, kind_a, "a", 1)
    hb = site(net, kind_b, "b", 2, first=ha if kind_b == "same" else None)
    tag = lab.prefix[3:9]
    a = Node(ha, "wgdisco", f"wa{tag}", *keypair(), ["10.9.0.1/24", "fd00:9::1/64"], discovery=discovery(kind_a, net))
    b = Node(hb, "wgdisco", f"wb{tag}", *keypair(), ["10.9.0.2/24", "fd00:9::2/64"], discovery=discovery(kind_b, net))
    a.peers = [b.peer_spec(keepalive=25)]
    b.peers = [a.peer_spec(keepalive=25)]
    return net, a, b


def first_ping(node: Node, target: str, timeout: float) -> float | None:
    """Seconds until a ping from ``node`` to ``target`` is answered (1 s per try), None if not
    within ``timeout``."""
    start = time.monotonic()
    while node.host.run(["ping", "-c1", "-W1", target], check=False).returncode != 0:
        if time.monotonic() - start >= timeout:
            return None
        time.sleep(0.1)
    return time.monotonic() - start


def reboot(router: Host, old_wan: str, new_wan: str) -> None:
    """``router`` "reboots" (issue 24): a new WAN address (``old_wan`` goes, ``new_wan`` with its
    prefix length comes; the same LAN) and its conntrack table flushed, so every NAT mapping and
    every filter state is gone at once."""
    router.sysctl("net.ipv4.conf.wan0.promote_secondaries=1")
    router.ip("addr", "add", new_wan, "dev", "wan0")
    router.ip("addr", "del", old_wan, "dev", "wan0")
    router.run([sys.executable, "-c", "from pyroute2 import Conntrack\nConntrack().flush()"])


def ping_replies(proc: object) -> list[float]:
    """The wall-clock times (``ping -D``) of the replies a background ping has printed."""
    import re

    return [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", proc.stdout(), re.M)]  # type: ignore[attr-defined]


def recovery(pinger: object, rebooted_at: float, timeout: float, in_flight: float = 0.4) -> float | None:
    """Seconds from ``rebooted_at`` (wall clock) to the first reply of ``pinger`` (a ``ping -D``
    through the tunnel) sent after the reboot; replies within ``in_flight`` of it crossed the
    router before it. None if none came within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        after = [t for t in ping_replies(pinger) if t > rebooted_at + in_flight]
        if after:
            return after[0] - rebooted_at
        time.sleep(0.05)
    return None


# --- idle pairs (issue 26): NATs that forget UDP flows after 30 s, forwarded datagrams counted ----

COUNT_TABLE = """
table inet idlecount {
    chain forward {
        type filter hook forward priority -10; policy accept;
        meta l4proto udp udp sport != { 53, 3478, 3479 } udp dport != { 53, 3478, 3479 } counter
    }
}
"""


def idle_pair(lab: Lab) -> tuple[Node, Node, list[Router]]:
    """The easy <-> easy cell with the defaults and no PersistentKeepalive, its routers' conntrack
    forgetting UDP flows after 30 s (``nf_conntrack_udp_timeout`` and ``_stream``), and a counter of
    the UDP datagrams each router forwards that are not DNS or STUN (``forwarded``). Not started."""
    _net, a, b = pair(lab, "easy", "easy")
    a.peers = [b.peer_spec()]
    b.peers = [a.peer_spec()]
    routers = [lab.nodes["ra"], lab.nodes["rb"]]
    for router in routers:
        router.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=30",
                    "net.netfilter.nf_conntrack_udp_timeout_stream=30"])
        router.run(["nft", "-f", "-"], input=COUNT_TABLE)
    return a, b, routers  # type: ignore[return-value]


def forwarded(router: Host) -> int:
    """UDP datagrams ``router`` forwarded (not DNS, not STUN) since idle_pair made the counter."""
    rules = json.loads(router.run(["nft", "-j", "list", "table", "inet", "idlecount"]).stdout)["nftables"]
    return sum(r["rule"]["expr"][-1]["counter"]["packets"] for r in rules if "rule" in r)
