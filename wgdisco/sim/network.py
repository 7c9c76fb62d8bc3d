"""An in-memory network for node cores (proto/node.py): hosts, NATs, STUN servers, a directory.
(Moved here from tests/unit/nodesim.py, issue 26, so that bench/meshsim.py runs the same network.)

Addresses are ``(ip, port)`` tuples; ``(ip, port, id)`` is the same remote reached from the
node's extra (birthday) socket ``id`` (proto/birthday.py), which the node opens and closes on
its SocketsWanted/SocketsClosed events. A NAT (RFC 4787 terms) has an inside prefix and a public
IP; its mapping is endpoint-independent ("eim": one public port per inside address) or
endpoint-dependent ("edm": a new public port per destination, random in 1024..65535 as Linux's
``masquerade fully-random``), its filtering endpoint-
independent ("eif": anyone may send to a mapped port) or address-and-port-dependent ("apdf":
only destinations the inside host sent to), with hairpinning on or off. Every datagram takes
``latency`` seconds. The directory stands for mDNS or unicast DNS-SD: a node's RecordChanged
reaches every other node as a Sighting (``records.record_from_dns`` of what it would publish),
unless ``Net.rendezvous`` is set (``rendezvous.py``: LAN directories and a unicast nameserver).

``Net(fast=True)`` is the scale simulator's mode: nodes found by address, NATs by IP, and node
deadlines kept in a heap re-armed after every ``pump`` instead of asking every node at every
step. It assumes nodes, their addresses and NATs change only through ``Net``/``SimNode`` methods
(the unit tests move them by hand, so they use the default mode, which looks everything up).
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from aioice.stun import Class, Message, Method, parse_message

import random
import struct

from wgdisco.proto import keys, records
from wgdisco.proto.core import flush
from wgdisco.proto.device import Device
from wgdisco.proto.node import Node, RecordChanged, SocketsClosed, SocketsWanted

Addr = tuple[str, int]


class Rng:
    """Seeded random bytes (the ``rng`` every core takes)."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.r.randbytes(n)


def ipv4_packet(src: str, dst: str, payload: bytes = b"ping") -> bytes:
    """A minimal IPv4/UDP-protocol header around ``payload`` (what the TUN would hand over)."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + payload


@dataclass
class Nat:
    name: str
    inside: ipaddress.IPv4Network
    public_ip: str
    mapping: str = "eim"  # or "edm"
    filtering: str = "apdf"  # or "eif"; "stun-only": only STUN answers get in (a firewall)
    hairpin: bool = False
    next_port: int = 40000
    out: dict[Any, int] = field(default_factory=dict)  # (src[, dst]) -> public port
    back: dict[int, Addr] = field(default_factory=dict)  # public port -> inside address
    permits: dict[int, set[Addr]] = field(default_factory=dict)  # public port -> remotes sent to
    # a port mapping (PCP/NAT-PMP/UPnP): public port -> inside address, open to anyone; replies to
    # those who came in through it leave from it (conntrack's reply direction)
    forwards: dict[int, Addr] = field(default_factory=dict)
    forwarded: set[tuple[Addr, Addr]] = field(default_factory=set)  # (inside, remote) seen through one
    seed: int = 0  # edm: the random ports' seed
    # conntrack's UDP timeout (nf_conntrack_udp_timeout): a flow (public port, remote) no packet
    # used for this long is forgotten, and a mapping with no flow left goes (None: never);
    # ``clock`` gives the time (the Net sets it)
    udp_timeout: float | None = None
    clock: Any = None
    used: dict[tuple[int, Any], float] = field(default_factory=dict)  # (port, remote) -> last packet

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed or self.name)
        self._expiry: list[tuple[float, int, Any]] = []  # (when a flow may be due, port, remote)
        self._armed: set[tuple[int, Any]] = set()  # flows with an entry in _expiry (one each)
        self._key_of: dict[int, Any] = {}  # public port -> its key in ``out``

    def _expire(self) -> None:
        """Forget the flows no packet used for ``udp_timeout`` (a heap of candidate times, each
        checked against the flow's last packet when it comes up: O(log n) per packet)."""
        if self.udp_timeout is None or self.clock is None:
            return
        now, heap = self.clock(), self._expiry
        while heap and heap[0][0] <= now:
            _, port, remote = heapq.heappop(heap)
            last = self.used.get((port, remote))
            if last is None:
                self._armed.discard((port, remote))
                continue
            if now - last < self.udp_timeout:  # used since: look again when it may be due
                heapq.heappush(heap, (max(last + self.udp_timeout, math.nextafter(now, math.inf)), port, remote))
                continue
            self._armed.discard((port, remote))
            del self.used[(port, remote)]
            self.permits.get(port, set()).discard(remote)
            self.forgotten += 1
            if not self.permits.get(port):
                self.back.pop(port, None)
                self.permits.pop(port, None)
                key = self._key_of.pop(port, None)
                if key is not None and self.out.get(key) == port:
                    del self.out[key]

    forgotten: int = 0  # mappings that timed out

    def contains(self, ip: str) -> bool:
        return ipaddress.ip_address(ip) in self.inside

    def translate_out(self, src: Addr, dst: Addr) -> Addr:
        self._expire()
        if (src, dst) in self.forwarded:
            return (self.public_ip, next(p for p, inside in self.forwards.items() if inside == src))
        key = src if self.mapping == "eim" else (src, dst)
        port = self.out.get(key)
        if port is None:
            if self.mapping == "edm":
                port = self._random.randint(1024, 65535)
                while port in self.back or port in self.forwards:
                    port = self._random.randint(1024, 65535)
            else:
                port = self.next_port
                self.next_port += 7  # not the inside port: a NAT that keeps ports hides nothing
            self.out[key] = port
            self._key_of[port] = key
            self.back[port] = src
        self.permits.setdefault(port, set()).add(dst)
        if self.clock is not None:
            self._use(port, dst)
        return (self.public_ip, port)

    def _use(self, port: int, remote: Any) -> None:
        now = self.clock()
        if self.udp_timeout is not None and (port, remote) not in self._armed:
            self._armed.add((port, remote))
            heapq.heappush(self._expiry, (now + self.udp_timeout, port, remote))
        self.used[(port, remote)] = now

    def translate_in(self, src: Addr, dst: Addr) -> Addr | None:
        if dst[1] in self.forwards:
            self.forwarded.add((self.forwards[dst[1]], src))
            return self.forwards[dst[1]]
        self._expire()
        inside = self.back.get(dst[1])
        if inside is None:
            return None
        if self.filtering == "stun-only" and src[1] != 3478:
            return None
        if self.filtering in ("apdf", "stun-only") and src not in self.permits.get(dst[1], set()):
            return None
        if self.clock is not None and (dst[1], src) in self.used:
            self._use(dst[1], src)
        return inside

    def renumber(self, public_ip: str) -> None:
        """The router got a new WAN address: every mapping is gone."""
        self.public_ip = public_ip
        self.out.clear()
        self.back.clear()
        self.permits.clear()


class StunServer:
    """A Binding server; with ``alternate`` (ip, port) an RFC 5780 one: it names the alternate in
    OTHER-ADDRESS and answers CHANGE-REQUEST from the changed IP and/or port."""

    def __init__(self, addr: Addr, alternate: Addr | None = None) -> None:
        self.addr = addr
        self.alternate = alternate
        self.requests = 0

    def receive(self, data: bytes, src: Addr, dst: Addr) -> tuple[bytes, Addr] | None:
        """The answer and the address it leaves from (``dst``, or the changed one)."""
        req = parse_message(data)
        if req.message_method != Method.BINDING or req.message_class != Class.REQUEST:
            return None
        self.requests += 1
        attributes: dict[str, Any] = {"XOR-MAPPED-ADDRESS": src}
        origin = dst
        if self.alternate is not None:
            attributes["OTHER-ADDRESS"] = self.alternate
            change = req.attributes.get("CHANGE-REQUEST", 0)
            origin = (self.alternate[0] if change & 4 else dst[0], self.alternate[1] if change & 2 else dst[1])
        resp = Message(Method.BINDING, Class.RESPONSE, transaction_id=req.transaction_id, attributes=attributes)
        return bytes(resp), origin


KINDS = ("data", "keepalive", "handshake", "probe", "stun")


class SimNode:
    """A node core with its device, at ``addr`` (inside a NAT or on the internet). With ``history``
    (the default) it keeps what it received, its events and every datagram's (time, destination)
    for tests to read; the scale simulator turns that off and reads ``counts`` instead."""

    def __init__(self, net: Net, name: str, addr: Addr, tunnel_ip: str | None, seed: int, *,
                 stun: list[Addr] = (), traversal: bool = True, lan_prefix: str | None = None,
                 mesh: Any = None, mesh_name: str | None = None, unicast: bool = True,
                 history: bool = True) -> None:
        self.net, self.name, self.addr, self.fixed_ip = net, name, addr, tunnel_ip
        self.index = len(net.nodes)
        rng = Rng(seed)
        self.device = Device(keys.clamp(rng(32)), rng=rng, now=net.now)
        self.node = Node(self.device, rng=rng, wall=1.7e9, addr_of=lambda ip, port: (ip, port),
                         host_of=lambda a: a[0], format_addr=lambda a: f"{a[0]}:{a[1]}", port=addr[1],
                         traversal=traversal, stun_servers=list(stun), mesh=mesh, mesh_name=mesh_name,
                         via=lambda a, sid: (a[0], a[1], sid), via_socket=lambda a: a[2] if len(a) == 3 else None,
                         unicast=unicast,  # LookupWanted events for unicast DNS-SD (the directory pushes anyway)
                         allowed=[ipaddress.ip_interface(f"{tunnel_ip}/32")] if tunnel_ip else [])
        self.lan_prefix = lan_prefix or f"{addr[0]}/24"
        self.history = history
        self.received: list[bytes] = []
        self.events: list[Any] = []
        self.timed_events: list[tuple[float, Any]] = []  # (when, event)
        self.record: records.ServiceRecord | None = None
        self.sockets: dict[int, int] = {}  # extra socket id -> its local port
        self.sockets_opened = 0
        self.closed_sends = 0
        self.max_sockets = 0  # the most extra sockets open at once
        self.sent: list[tuple[float, Addr]] = []  # every datagram's (time, destination)
        # datagrams sent by kind (Net.kind_of), and received
        self.counts = dict.fromkeys(KINDS + ("received",), 0)

    def source_of(self, sid: int | None) -> Addr:
        return self.addr if sid is None else (self.addr[0], self.sockets[sid])

    @property
    def tunnel_ip(self) -> str:
        """The fixed tunnel IP, or (mesh) the IPv4 derived from our key."""
        if self.fixed_ip is not None:
            return self.fixed_ip
        return str(self.node.own_mesh_interfaces()[0].ip)

    @property
    def public(self) -> bytes:
        return self.device.identity.public

    def lan(self) -> list[tuple[str, Any]]:
        prefix = ipaddress.ip_network(self.lan_prefix, strict=False)
        return [("eth0", ipaddress.ip_interface(f"{self.addr[0]}/{prefix.prefixlen}"))]

    def start(self) -> None:
        self.node.start(self.lan(), self.net.now)
        self.pump()

    def add(self, other: SimNode) -> None:
        """Make ``other`` a peer (as a [Peer] section or ``wg set`` would), AllowedIPs its tunnel IP."""
        peer = self.node.add_peer(other.public, self.net.now)
        self.device.allowed_ips.insert(ipaddress.ip_network(f"{other.tunnel_ip}/32"), peer)
        self.pump()

    def ping(self, other: SimNode, payload: bytes = b"ping") -> None:
        out = self.device.send_packet(ipv4_packet(self.tunnel_ip, other.tunnel_ip, payload), self.net.now)
        if out is not None:
            self.send(out[0], out[1])
        self.pump()

    def send(self, data: bytes, dst: Any) -> None:
        """From the listen socket, or from extra socket ``dst[2]`` to ``dst[:2]``."""
        if self.history:
            self.sent.append((self.net.now, dst))
        self.counts[self.net.kind_of(data, dst)] += 1
        if len(dst) == 3:
            if dst[2] not in self.sockets:
                self.closed_sends += 1  # on a socket not (or no longer) open: a bug in the node
                return
            self.net.send(self.source_of(dst[2]), dst[:2], data)
        else:
            self.net.send(self.addr, dst, data)

    def got(self, other: SimNode, payload: bytes = b"ping") -> bool:
        return ipv4_packet(other.tunnel_ip, self.tunnel_ip, payload) in self.received

    def deliver(self, data: bytes, src: Addr) -> None:
        now = self.net.now
        self.counts["received"] += 1
        inner = self.node.receive_datagram(data, src, now)  # the node's one demux, as the data plane's
        if inner:
            if self.history:
                self.received.append(inner)
            if inner[20:24] == b"ping":  # the kernel answers an echo request (as ICMP would)
                reply = ipv4_packet(self.tunnel_ip, str(ipaddress.IPv4Address(inner[12:16])), b"pong" + inner[24:])
                out = self.device.send_packet(reply, now)
                if out is not None:
                    self.send(out[0], out[1])
        self.pump()

    def pump(self) -> None:
        flush(self.node, self._send_all, self._on_event)  # the shells' one drive step (proto/core.py)
        self.net.rearm(self)

    def _send_all(self, out: list[tuple[bytes, Any]]) -> None:
        for data, dst in out:
            self.send(data, dst)

    def _on_event(self, event: Any) -> None:
        if self.history:
            self.events.append(event)
            self.timed_events.append((self.net.now, event))
        if isinstance(event, SocketsWanted):
            for sid in event.ids:
                self.sockets[sid] = 20000 + sid  # an ephemeral port
                self.net.socket_opened(self, sid)
            self.sockets_opened += len(event.ids)
            self.max_sockets = max(self.max_sockets, len(self.sockets))
        elif isinstance(event, SocketsClosed):
            for sid in event.ids:
                self.net.socket_closed(self, sid)
                self.sockets.pop(sid, None)
        if isinstance(event, RecordChanged):
            self.record = event.record
            self.net.publish(self, event.record)
        elif self.net.on_event is not None:
            self.net.on_event(self, event)


class Net:
    def __init__(self, latency: float = 0.01, *, fast: bool = False) -> None:
        self.now = 1000.0
        self.latency = latency
        self.fast = fast
        self.nats: list[Nat] = []
        self.stun: dict[Addr, StunServer] = {}
        self.nodes: list[SimNode] = []
        self.queue: list[tuple[float, int, Addr, Addr, bytes]] = []
        self.seq = 0
        self.delivered = 0
        self.dropped = 0
        self.directory = True  # records reach the others (mDNS/DNS up)
        self.source = "dns"
        # set by the scale simulator (rendezvous.py): where records go, what else a node's events do
        self.rendezvous: Any = None
        self.on_event: Callable[[SimNode, Any], None] | None = None
        self.calls: list[tuple[float, int, Callable[[], None]]] = []  # (when, seq, what): timed actions
        # fast mode's indexes
        self._by_addr: dict[Addr, SimNode] = {}
        self._by_socket: dict[Addr, tuple[SimNode, int]] = {}
        self._nat_inside: dict[str, Nat | None] = {}
        self._nat_public: dict[str, Nat] = {}
        self._deadlines: list[tuple[float, int]] = []  # (deadline, node index), stale entries skipped
        self._armed: dict[int, float] = {}  # node index -> its deadline in _deadlines

    # --- building

    def nat(self, name: str, inside: str, public_ip: str, **kw: Any) -> Nat:
        nat = Nat(name, ipaddress.ip_network(inside), public_ip, **kw)
        nat.clock = lambda: self.now
        self.nats.append(nat)
        self._nat_inside.clear()
        self._nat_public[public_ip] = nat
        return nat

    def stun_server(self, addr: Addr, alternate: Addr | None = None) -> Addr:
        server = StunServer(addr, alternate)
        self.stun[addr] = server
        if alternate is not None:  # it listens on both IPs and both ports
            for ip in (addr[0], alternate[0]):
                for port in (addr[1], alternate[1]):
                    self.stun.setdefault((ip, port), server)
        return addr

    def node(self, name: str, addr: Addr, tunnel_ip: str | None, **kw: Any) -> SimNode:
        n = SimNode(self, name, addr, tunnel_ip, seed=len(self.nodes) + 1, **kw)
        self.nodes.append(n)
        self._by_addr[addr] = n
        return n

    def socket_opened(self, node: SimNode, sid: int) -> None:
        self._by_socket[(node.addr[0], node.sockets[sid])] = (node, sid)

    def socket_closed(self, node: SimNode, sid: int) -> None:
        if sid in node.sockets:
            self._by_socket.pop((node.addr[0], node.sockets[sid]), None)

    def call_at(self, when: float, what: Callable[[], None]) -> None:
        """Run ``what`` at simulated time ``when`` (a nameserver's answer, a traffic pattern)."""
        self.seq += 1
        heapq.heappush(self.calls, (when, self.seq, what))

    # --- moving datagrams

    def nat_of(self, ip: str) -> Nat | None:
        if not self.fast:
            return next((n for n in self.nats if n.contains(ip)), None)
        try:
            return self._nat_inside[ip]
        except KeyError:
            nat = self._nat_inside[ip] = next((n for n in self.nats if n.contains(ip)), None)
            return nat

    def _nat_at(self, ip: str) -> Nat | None:
        """The NAT whose public address is ``ip``."""
        if not self.fast:
            return next((n for n in self.nats if n.public_ip == ip), None)
        return self._nat_public.get(ip)

    def _node_at(self, addr: Addr) -> SimNode | None:
        if not self.fast:
            return next((n for n in self.nodes if n.addr == addr), None)
        return self._by_addr.get(addr)

    def kind_of(self, data: bytes, dst: Any) -> str:
        """What a node's datagram is (KINDS): WireGuard transport data with a payload, a keepalive
        (an empty one, whitepaper §6.5), a handshake message (types 1-3), something to a STUN
        server, else a path probe (wgdisco's own type, birthday probes included)."""
        if dst[:2] in self.stun:
            return "stun"
        if data[0] == 4 and data[1:4] == b"\0\0\0":
            return "data" if len(data) > 32 else "keepalive"
        if data[0] in (1, 2, 3) and data[1:4] == b"\0\0\0":
            return "handshake"
        return "probe"

    def send(self, src: Addr, dst: Addr, data: bytes) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + self.latency, self.seq, src, dst, data))

    def _route(self, src: Addr, dst: Addr, data: bytes) -> None:
        inner = self.nat_of(src[0])
        if inner is not None and not inner.contains(dst[0]):
            if dst[0] == inner.public_ip and not inner.hairpin:
                self.dropped += 1
                return
            src = inner.translate_out(src, dst)
        outer = self._nat_at(dst[0])
        if outer is not None:
            inside = outer.translate_in(src, dst)
            if inside is None:
                self.dropped += 1
                return
            dst = inside
        server = self.stun.get(dst)
        if server is not None:
            reply = server.receive(data, src, dst)
            if reply is not None:
                self.send(reply[1], src, reply[0])
            return
        node = self._node_at(dst)
        if node is None:
            if self.fast:
                hit = self._by_socket.get(dst)  # an extra socket?
                if hit is not None:
                    self.delivered += 1
                    hit[0].deliver(data, (src[0], src[1], hit[1]))
                    return
            else:
                for n in self.nodes:  # an extra socket?
                    if n.addr[0] == dst[0]:
                        sid = next((i for i, port in n.sockets.items() if port == dst[1]), None)
                        if sid is not None:
                            self.delivered += 1
                            n.deliver(data, (src[0], src[1], sid))
                            return
            self.dropped += 1
            return
        self.delivered += 1
        node.deliver(data, src)

    def goodbye(self, origin: SimNode) -> None:
        """``origin`` withdraws its record (an mDNS goodbye) and goes quiet."""
        for node in self.nodes:
            if node is not origin:
                node.node.receive_goodbye(origin.public, self.source, self.now)
                node.pump()

    def publish(self, origin: SimNode, record: records.ServiceRecord) -> None:
        if not self.directory:
            return
        if self.rendezvous is not None:
            return self.rendezvous.publish(origin, record)
        sighting = records.record_from_dns(record.instance_label, record.port, record.target,
                                           [str(a) for a in record.addresses], records.build_txt(record))
        for node in self.nodes:
            if node is not origin:
                node.node.receive_sighting(sighting, self.source, self.now)
                node.pump()

    # --- time

    def rearm(self, node: SimNode) -> None:
        """Fast mode: ``node`` was driven; its deadline goes (back) into the heap."""
        if not self.fast:
            return
        t = node.node.next_deadline(self.now)
        if t is None:
            self._armed.pop(node.index, None)
        elif self._armed.get(node.index) != t:
            self._armed[node.index] = t
            heapq.heappush(self._deadlines, (t, node.index))

    def _next_node_time(self) -> float | None:
        heap, armed = self._deadlines, self._armed
        while heap and armed.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: the node was re-armed since
        return heap[0][0] if heap else None

    def next_time(self) -> float | None:
        times = [self.queue[0][0]] if self.queue else []
        if self.calls:
            times.append(self.calls[0][0])
        if self.fast:
            t = self._next_node_time()
            if t is not None:
                times.append(t)
        else:
            for n in self.nodes:
                t = n.node.next_deadline(self.now)
                if t is not None:
                    times.append(t)
        return min(times) if times else None

    def _due_nodes(self) -> list[SimNode]:
        if not self.fast:
            return self.nodes
        due = set()
        while (t := self._next_node_time()) is not None and t <= self.now:
            _, index = heapq.heappop(self._deadlines)
            del self._armed[index]
            due.add(index)
        return [self.nodes[i] for i in sorted(due)]

    def step(self, until: float) -> None:
        """Advance to the next event (at most to ``until``) and process everything due then."""
        t = self.next_time()
        self.now = until if t is None or t > until else max(t, self.now)
        while self.calls and self.calls[0][0] <= self.now:
            heapq.heappop(self.calls)[2]()
        while self.queue and self.queue[0][0] <= self.now:
            _, _, src, dst, data = heapq.heappop(self.queue)
            self._route(src, dst, data)
        for n in self._due_nodes():
            t = n.node.next_deadline(self.now)
            if t is not None and t <= self.now:
                n.node.run_timers(self.now)
                n.pump()
            elif self.fast:
                self.rearm(n)
        t = self.next_time()
        if t is not None and t <= self.now:  # nothing changed at this instant: move on a little
            self.now += 0.001

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step(end)

    def run_until(self, cond: Any, limit: float) -> float:
        """Step until ``cond()`` holds; the simulated seconds it took (AssertionError at ``limit``)."""
        start = self.now
        end = start + limit
        while not cond():
            if self.now >= end:
                raise AssertionError(f"not within {limit} s (simulated)")
            self.step(end)
        return self.now - start

    def ping_until(self, a: SimNode, b: SimNode, limit: float, every: float = 1.0) -> float:
        """``a`` pings ``b`` every ``every`` s (as `ping` does) until one arrives; seconds to it."""
        start = self.now
        tag = f"ping-{self.seq}".encode()
        a.ping(b, tag)
        next_ping = self.now + every
        while not b.got(a, tag):
            if self.now - start >= limit:
                raise AssertionError(f"{a.name} -> {b.name}: no ping through within {limit} s (simulated)")
            if self.now >= next_ping:
                a.ping(b, tag)
                next_ping = self.now + every
            self.step(min(next_ping, start + limit))
        return self.now - start
