"""A zero-config mesh of N members on the in-memory internet (issue 26; run by bench/meshsim.py).

Every member is a ``Node`` core (proto/node.py, the daemon's) sharing one mesh key, so every
member is a peer of every other. Members sit on sites: a site is one LAN (an mDNS directory,
rendezvous.py) behind one NAT of a kind from the published NAT matrix (bench/natmatrix.py,
wgdisco/lab/natcells.py), or on the internet itself:

==============  =====================================  ==========================================
kind            simulated NAT (RFC 4787 terms)         the matrix's cell
==============  =====================================  ==========================================
``easy``        endpoint-independent mapping and       (a full-cone router; no lab cell)
                filtering
``restricted``  endpoint-independent mapping, address  "easy NAT" (nftables, ports kept,
                and port-dependent filtering           stateful filter)
``hard``        endpoint-dependent (random port per    "hard NAT" (``masquerade fully-random``)
                destination), address and port-
                dependent filtering
``none``        no NAT                                 "WAN host"
==============  =====================================  ==========================================

NATs forget a UDP flow after ``udp_timeout`` (Linux conntrack's 30 s by default). Two STUN
servers on the internet; one unicast DNS-SD nameserver every member publishes to and browses
(``Domain`` configured); mDNS on each site's LAN. Two members behind hard NATs on different
sites cannot meet directly (the matrix's hard ↔ hard row, by design): those pairs are left out
of "full mesh" and counted apart. CGNAT (a double NAT), port mapping and IPv6 are not simulated.

Addresses: sites' LANs are 10.<a>.<b>.0/24; public addresses come from 198.18.0.0/15 (RFC 2544's
benchmarking block: enough for thousands of sites; nothing here leaves memory).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from wgdisco.proto.mesh import Mesh
from wgdisco.sim.network import KINDS as DATAGRAM_KINDS
from wgdisco.sim.network import Net, SimNode
from wgdisco.sim.rendezvous import MAX_MESSAGE, Nameserver, Rendezvous

__all__ = ["KINDS", "DEFAULT_MIX", "Config", "MeshSim", "Window"]

KINDS: dict[str, dict[str, str] | None] = {
    "easy": {"mapping": "eim", "filtering": "eif"},
    "restricted": {"mapping": "eim", "filtering": "apdf"},
    "hard": {"mapping": "edm", "filtering": "apdf"},
    "none": None,
}
DEFAULT_MIX = {"easy": 0.15, "restricted": 0.45, "hard": 0.10, "none": 0.30}
PUBLIC = ipaddress.ip_network("198.18.0.0/15")
STUN1, STUN2 = ("203.0.113.250", 3478), ("198.51.100.250", 3478)


@dataclass
class Config:
    members: int = 20
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    lan_share: float = 0.3  # the share of members on LANs of ``lan_size`` (the rest: one per site)
    lan_size: int = 5
    udp_timeout: float | None = 30.0
    latency: float = 0.02  # one way, any two hosts
    dns_rtt: float = 0.04
    max_message: int = MAX_MESSAGE  # raise to see past the one-message PTR limit
    seed: int = 1
    max_peers: int | None = None  # MeshMaxPeers; None: enough for everyone (max(256, members))
    sites: list[tuple[str, int]] | None = None  # (kind, members) of each site, instead of mix/lan_*
    fast: bool = True  # Net(fast=...): the indexes and the deadline heap (network.py)


@dataclass
class Window:
    """What the members sent during ``seconds`` of simulated time."""

    seconds: float
    wall: float
    sent: dict[str, int]  # by kind (network.KINDS): data, keepalive, handshake, probe, stun
    dns: dict[str, int]  # queries by type, updates, failed, lookups-unchanged
    mdns: int  # multicast messages

    def per_member_minute(self, members: int) -> dict[str, float]:
        minutes = self.seconds / 60
        return {k: v / members / minutes for k, v in self.sent.items()}


class MeshSim:
    def __init__(self, config: Config) -> None:
        self.config = c = config
        self.rng = random.Random(c.seed)
        self.net = Net(latency=c.latency, fast=c.fast)
        self.net.stun_server(STUN1)
        self.net.stun_server(STUN2)
        self.nameserver = Nameserver(max_message=c.max_message)
        self.rendezvous = Rendezvous(self.net, self.nameserver, rtt=c.dns_rtt)
        self.mesh = Mesh(b"", master=bytes(32), max_peers=c.max_peers or max(256, c.members))
        self.members: list[SimNode] = []
        self.kind: list[str] = []  # member -> its site's kind
        self.site: list[int] = []  # member -> its site
        self._build()
        self.started_at: float | None = None  # when the last member started
        self._pending: dict[int, set[int]] = {}  # member -> members it has no path to yet (expected pairs)
        self._index = {m.public: i for i, m in enumerate(self.members)}

    # --- building

    def _kinds(self, n: int) -> list[str]:
        names = list(self.config.mix)
        weights = [self.config.mix[k] for k in names]
        return self.rng.choices(names, weights, k=n)

    def _build(self) -> None:
        c = self.config
        if c.sites is not None:
            plan = [(size, kind) for kind, size in c.sites]
            c.members = sum(size for size, _ in plan)
        else:
            on_lans = int(c.members * c.lan_share) if c.lan_size > 1 else 0
            sizes = [c.lan_size] * (on_lans // c.lan_size) + ([on_lans % c.lan_size] if on_lans % c.lan_size else [])
            sizes += [1] * (c.members - sum(sizes))
            self.rng.shuffle(sizes)
            plan = list(zip(sizes, self._kinds(len(sizes))))
        public = iter(PUBLIC.hosts())
        for site, (size, kind) in enumerate(plan):
            lan = ipaddress.ip_network(f"10.{site // 250}.{site % 250 + 1}.0/24")
            nat = KINDS[kind]
            if nat is not None:
                self.net.nat(f"nat{site}", str(lan), str(next(public)), udp_timeout=c.udp_timeout,
                             seed=site + 1, **nat)
                hosts = [str(lan.network_address + 2 + i) for i in range(size)]
                prefix = str(lan)
            else:  # hosts on the internet, on one public LAN
                hosts = [str(next(public)) for _ in range(size)]
                prefix = f"{hosts[0]}/{32 if size == 1 else 24}"
            for ip in hosts:
                i = len(self.members)
                member = self.net.node(f"m{i}", (ip, 51820), None, mesh=self.mesh, lan_prefix=prefix,
                                       stun=[STUN1, STUN2], unicast=True, history=False)
                self.rendezvous.join(member, f"site{site}")
                self.members.append(member)
                self.kind.append(kind)
                self.site.append(site)

    def can_meet(self, i: int, j: int) -> bool:
        """Whether members i and j can have a direct path (not two hard NATs apart)."""
        return self.site[i] == self.site[j] or not (self.kind[i] == "hard" and self.kind[j] == "hard")

    def expected_pairs(self) -> int:
        return sum(len(p) for p in self._pending.values()) // 2 if self._pending else sum(
            1 for i in range(len(self.members)) for j in range(i + 1, len(self.members)) if self.can_meet(i, j))

    # --- running

    def start(self, ramp: float = 0.0) -> None:
        """Start every member, evenly over ``ramp`` seconds (0: all at once), as ``wgdisco up``
        does: the node starts, then unicast DNS-SD looks everything up at once."""
        n = len(self.members)
        base = self.net.now
        for i, member in enumerate(self.members):
            self.net.call_at(base + (ramp * i / n if n else 0), lambda m=member: self._start(m))
        self.started_at = base + (ramp * (n - 1) / n if n else 0)
        self._pending = {i: {j for j in range(n) if j != i and self.can_meet(i, j)} for i in range(n)}

    def _start(self, member: SimNode) -> None:
        member.start()
        member.node.lookup_all(self.net.now)
        member.pump()

    def run(self, seconds: float) -> None:
        self.net.run(seconds)

    def missing(self) -> int:
        """Directed pairs (expected to meet) without a path now, checking only those that had
        none at the last check: a pair found is not looked at again (see ``full_mesh``)."""
        now, members, index = self.net.now, self.members, self._index
        for i, others in self._pending.items():
            node = members[i].node
            if not others:
                continue
            # only its peers can have a path: O(peers), not O(members), while few are admitted
            done = [j for public in node.peers if (j := index[public]) in others and node.has_path(public, now)]
            others.difference_update(done)
        return sum(len(o) for o in self._pending.values())

    def full_mesh(self) -> bool:
        """Every expected pair has a path both ways, all at once (checked in full)."""
        now, members = self.net.now, self.members
        return all(members[i].node.has_path(members[j].public, now)
                   for i in range(len(members)) for j in range(len(members)) if i != j and self.can_meet(i, j))

    def run_to_full_mesh(self, limit: float, every: float = 1.0,
                         progress: Callable[[float, int], None] | None = None,
                         stop: Callable[[], bool] = lambda: False) -> float | None:
        """Run until every expected pair has a path (checked every ``every`` simulated seconds);
        seconds after the last member started, or None at ``limit`` (from now) or when ``stop()``
        (the caller's wall-clock budget)."""
        end = self.net.now + limit
        while self.net.now < end and not stop():
            target = min(self.net.now + every, end)
            while self.net.now < target and not stop():
                self.net.step(target)
            if stop():
                break
            if self.started_at is not None and self.net.now < self.started_at:
                continue
            left = self.missing()
            if progress is not None:
                progress(self.net.now - (self.started_at or 0), left)
            if left == 0 and self.full_mesh():
                return self.net.now - (self.started_at or 0)
            if left == 0:  # a path found earlier went: look at every pair again
                self._pending = {i: {j for j in range(len(self.members)) if j != i and self.can_meet(i, j)}
                                 for i in range(len(self.members))}
        return None

    def traffic(self, pairs_per_minute: float, seconds: float, duration: float = 30.0,
                every: float = 1.0) -> None:
        """From now for ``seconds``: a new random pair (of those that can meet) every
        60/``pairs_per_minute`` s pings across the tunnel every ``every`` s for ``duration`` s
        (the far side answers each, as the kernel answers an echo request)."""
        if pairs_per_minute <= 0:
            return
        n, start = len(self.members), self.net.now
        gap = 60.0 / pairs_per_minute
        t = start
        while t < start + seconds:
            while True:
                i, j = self.rng.sample(range(n), 2)
                if self.can_meet(i, j):
                    break
            a, b = self.members[i], self.members[j]
            k = 0.0
            while k < duration and t + k < start + seconds:
                self.net.call_at(t + k, lambda a=a, b=b: a.ping(b))
                k += every
            t += gap

    def counts(self) -> dict[str, Any]:
        sent = dict.fromkeys(DATAGRAM_KINDS, 0)
        for m in self.members:
            for k in sent:
                sent[k] += m.counts[k]
        ns = self.nameserver
        dns = dict(ns.queries)
        dns["updates"], dns["failed"] = ns.updates, ns.failed
        dns["lookups-unchanged"] = self.rendezvous.lookups_unchanged  # answered by the SOA serial
        return {"sent": sent, "dns": dns, "mdns": sum(lan.messages for lan in self.rendezvous.lans.values())}

    def window(self, seconds: float, clock: Callable[[], float]) -> Window:
        """Run ``seconds`` and count what happened in them (``clock``: wall time, for the caller)."""
        before, t0 = self.counts(), clock()
        self.net.run(seconds)
        after, wall = self.counts(), clock() - t0
        delta = {k: {x: after[k].get(x, 0) - before[k].get(x, 0) for x in after[k]} for k in ("sent", "dns")}
        return Window(seconds, wall, delta["sent"], delta["dns"], after["mdns"] - before["mdns"])
