"""The node: one node's identity and peer set, and the hub of the small cores that find paths to
its peers (docs/architecture.md, "The node hub").

The node wraps the WireGuard ``Device`` (proto/device.py) and joins cores of one shape (inputs
with ``now``; ``next_deadline()``; ``handle_timer(now)``; events drained by ``pop_events()``):
``PathDriver`` (probes, path choice, endpoints), ``BirthdayDriver`` (hard NATs),
``MeshMembership`` (admission, IPv4 plan, names), ``LookupSchedule`` (unicast DNS-SD) and
``NatObserver`` (STUN, NAT classification), ``Calls``; ``ownrecord`` and ``views`` are pure
functions. The mesh's side (proto/nodemesh.py) and the views (proto/nodeviews.py) are mixed in.

Every change to the peer set or the identity goes through the node's setters, whoever asks
(config, SIGHUP reload, ``wg set``, the mesh), so the cores never disagree about who is a peer.
Records are hints (ARCHITECTURE.md, "Trust model"): a stranger's record is counted and kept a
while; a candidate is used only once a probe answer or a handshake proves it.

In: ``start``, ``network_changed``, ``receive_sighting``, ``receive_goodbye``, ``browse_found``,
``set_mapping``, ``receive_datagram`` (every datagram of the tunnel socket, classified here),
``handle_timer``. Out: ``datagrams_to_send()``, ``next_deadline(now)``, ``next_event()``.
``now`` is monotonic seconds; addresses are opaque: ``addr_of(ip, port)`` makes one (LocalError
or ValueError when it cannot be used here), ``host_of(addr)`` gives its IP literal back and
``format_addr(addr)`` shows it to people.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Hashable, Iterable

from wgdisco.errors import LocalError
from wgdisco.proto import ownrecord, records, views
from wgdisco.proto.birthdaydriver import BirthdayDriver
from wgdisco.proto.calls import Calls
from wgdisco.proto.classify import PROBE, STUN, WIREGUARD, classify
from wgdisco.proto.crypto import substream
from wgdisco.proto.device import Device, Peer
from wgdisco.proto import events
from wgdisco.proto.events import *  # noqa: F401,F403 - the node's events are part of its interface (events.__all__)
from wgdisco.proto.events import (
    Event, HandshakeCompleted, MeshAddressChanged, NatClassified, NatSuspected, PortMappingChanged, ReflexiveChanged,
)
from wgdisco.proto.lookups import LookupSchedule
from wgdisco.proto.membership import CheckWanted, GoodbyeDue, MemberExpired, MeshMembership, RelookWanted
from wgdisco.proto.mesh import Mesh
from wgdisco.proto.nodemesh import NodeMesh
from wgdisco.proto.nodeviews import NodeViews
from wgdisco.proto.nat import Mapping
from wgdisco.proto.nodetiming import Timing
from wgdisco.proto.ownrecord import NAT_MAPPING, NAT_TXT, srv_target
from wgdisco.proto.pathdriver import CallWanted, PathDriver, Suspected
from wgdisco.proto.reflexive import RESTUN_MIN_INTERVAL, NatObserver
from wgdisco.proto.strangers import Strangers
from wgdisco.proto.views import REASON_TEXT

__all__ = ["Node", "Timing", "NAT_TXT", "NAT_MAPPING", "REASON_TEXT", "srv_target", "STRANGER_TTL",
           "MAX_STRANGERS", "RESTUN_MIN_INTERVAL", *events.__all__]

Addr = Hashable
Key = bytes
STRANGER_TTL, MAX_STRANGERS = Timing.stranger_ttl, Timing.max_strangers


class Node(NodeMesh, NodeViews):
    """One node's peers and identity, and the hub of the cores that find paths to them (sans-I/O)."""

    def __init__(
        self, device: Device, *, rng: Callable[[int], bytes], wall: float,
        addr_of: Callable[[str, int], Addr], host_of: Callable[[Addr], str], format_addr: Callable[[Addr], str] = str,
        port: int, traversal: bool = True, stun_servers: Iterable[Addr] = (), domain: str = "local",
        allowed: Iterable[Any] = (), mesh: Mesh | None = None, mesh_name: str | None = None, unicast: bool = False,
        via: Callable[[Addr, int], Addr] | None = None, via_socket: Callable[[Addr], int | None] = lambda addr: None,
        timing: Timing = Timing(),
    ) -> None:
        self.device, self.timing = device, timing
        self.mesh = mesh  # zero-config mesh (proto/mesh.py): records with its MAC admit their keys
        self.traversal = traversal  # probes and path choice: on with discovery or STUN
        self.unicast = unicast  # unicast DNS-SD (a Domain): peers are looked up (LookupWanted)
        self.addr_of, self.host_of, self.format_addr = addr_of, host_of, format_addr
        self.socket_of = via_socket  # the extra (birthday) socket an address is reached from; None: the listen socket
        self.own = ownrecord.OwnRecord(port=port, domain=domain, allowed=allowed, traversal=traversal)
        servers = list(stun_servers)
        self.nat = NatObserver(servers, rng=rng, refresh=timing.stun_refresh, host_of=host_of, addr_of=addr_of) \
            if servers else None
        self.paths = PathDriver(device, rng=rng, wall=wall, host_of=host_of, explain=self.explain, timing=timing.paths)
        self.birthdays = BirthdayDriver(self.paths.selector, rng=rng, timing=timing.birthday, addr_of=addr_of,
                                        host_of=host_of, format_addr=format_addr, via=via, via_socket=via_socket)
        self.membership = None if mesh is None else \
            MeshMembership(mesh, device.identity.public, wall=wall, name=mesh_name, timing=timing.mesh)
        # its jitter has a stream of its own (seeded from rng): lookups shift no probe's, STUN's or birthday's randomness
        self.lookups = LookupSchedule(rng=substream(rng(16)), timing=timing.lookups, mesh=mesh is not None, enabled=unicast)
        for public in device.peers:  # (configured before the node was made)
            self.lookups.add_peer(public, 0.0)
        self.history = views.PeerHistory()
        self.calls = Calls(device.identity.public)  # peers asked to open their side (issue 26)
        self.counters: dict[str, int] = {}
        self.drops: dict[str, int] = {}  # datagrams of no kind we take (receive_datagram)
        self.started = False
        self._own_mapping: str = Mapping.UNKNOWN  # what the path selector was last told
        self._outbox: list[tuple[bytes, Addr]] = []
        self._events: deque[Event] = deque()
        self.strangers = Strangers(cap=timing.max_strangers, ttl=timing.stranger_ttl)
        self._draining = False  # mesh records that waited for the budget are being worked on
        self.probing: set[Key] = set()  # peers whose latest record says probe=1: they run wgdisco

    # --- peers and identity ---------------------------------------------------------

    @property
    def peers(self) -> frozenset[Key]:
        return frozenset(self.device.peers)

    @property
    def public_key(self) -> bytes:
        return self.device.identity.public

    def add_peer(self, public: Key, now: float, preshared_key: bytes | None = None) -> Peer:
        """A new peer (LocalError: it exists, or it is our own key): probed and tried at once
        if its record was seen while it was a stranger."""
        peer = self.device.add_peer(public, preshared_key)
        self.paths.add_peer(public)
        self.lookups.add_peer(public, now)
        if (seen := self.strangers.take(public, now)) is not None:
            self.receive_sighting(*seen, now)
        return peer

    def remove_peer(self, public: Key) -> None:
        """Forget ``public`` everywhere: its session, probe keys, candidates, schedules."""
        self.device.remove_peer(public)
        self._forget(public)

    def _forget(self, public: Key) -> None:
        self.paths.remove_peer(public)
        self.birthdays.remove_peer(public)
        self.lookups.forget(public)
        self.history.forget(public)
        self.calls.forget(public)
        self.probing.discard(public)
        self._events.extend(self.birthdays.pop_events())  # its punched sockets close (SocketsClosed)

    def set_allowed_ips(self, public: Key, changes: Iterable[tuple[Any, bool]] = (), replace: bool = False) -> None:
        """Change a peer's AllowedIPs (config, SIGHUP, ``wg set``): ``replace`` drops them all first,
        then each (network, remove) in order. A mesh member keeps its derived /32 and /128 whatever
        is asked: they are the mesh's, not the config's (docs/mesh.md); re-adding them is counted."""
        peer, table = self.device.peers[public], self.device.allowed_ips
        if replace:
            table.remove_by_peer(peer)
        for net, remove in changes:
            table.remove(net, peer) if remove else table.insert(net, peer)
        if self.is_mesh_peer(public):
            have = set(table.entries_for_peer(peer))
            for net in self.mesh_addresses(public):
                if net not in have:
                    table.insert(net, peer)
                    self._count("mesh-addresses-kept")

    def set_identity(self, private_key: bytes, now: float) -> None:
        """A new private key (``wg set private-key``): new sessions, probe keys and record."""
        old = self.device.identity.public
        self.device.set_private_key(private_key)
        if self.device.identity.public == old:
            return  # unchanged (wg syncconf resends it): nothing to redo
        for public in self.paths.identity_changed():
            self._forget(public)  # the device dropped a peer that had our new key
        if self.membership is not None:
            self.membership.set_own_key(self.public_key)
            self._collect(now)
        self.calls.set_own_key(self.public_key)
        self._update_record(now)

    def set_port(self, port: int, now: float) -> None:
        """The listen port changed: the record and every reflexive address are stale."""
        if port == self.own.port:
            return
        self.own.port = port
        if self.nat is not None:
            self.nat.restart(now)
            self._collect(now)
        self._update_record(now)

    def set_endpoint(self, public: Key, addr: Addr | None, cause: str) -> None:
        """An endpoint from outside the node's own policy (config, uapi)."""
        if (peer := self.device.peers.get(public)) is not None:
            self.device.set_endpoint(peer, addr, cause)

    def set_persistent_keepalive(self, public: Key, interval: int, now: float) -> None:
        self.device.set_persistent_keepalive(self.device.peers[public], interval, now)
        self.paths.selector.set_pinned(public, interval > 0, now)  # in use for good: its NAT path is kept

    def set_preshared_key(self, public: Key, psk: bytes | None) -> None:
        self.device.set_preshared_key(self.device.peers[public], psk)

    # --- the network ----------------------------------------------------------------

    def start(self, lan: Iterable[tuple[str, Any]], now: float) -> None:
        """Begin: our interfaces' addresses (``(ifname, ip_interface)``), then STUN. Again (a key
        came back after ``wg set private-key /dev/null``): as a network change."""
        if self.started:
            return self.network_changed(lan, now)
        self.started = True
        self.own.set_lan(lan)
        self.paths.networks_changed(self.local_networks, now)
        self._own_openness(now)
        if self.nat is not None:
            self.nat.start(now)
            self._collect(now)
        self._update_record(now)

    def network_changed(self, lan: Iterable[tuple[str, Any]], now: float) -> None:
        """Addresses came or went: new local networks, STUN again, probe every current path."""
        self.own.set_lan(lan)
        self.paths.networks_changed(self.local_networks, now)
        self._own_openness(now)
        if self.nat is not None:
            self.nat.restart(now, reclassify=True)  # another network, maybe another NAT
            self._collect(now)
        if self.traversal:
            self.paths.probe_current(now)
            self._collect(now)
        self._update_record(now)

    def _own_openness(self, now: float) -> None:
        if self.nat is not None and self.traversal:  # IPv4 paths from an open address need no keepalive
            self.paths.selector.set_open(self.open_address, now)

    def set_mapping(self, external: tuple[str, int] | None, now: float) -> None:
        """The gateway maps ``external`` (ip, port) to our listen port (PCP, NAT-PMP or UPnP IGD,
        proto/portmap.py): published as a candidate (kind "mapped"); None: it went."""
        if external != self.own.mapped:
            self.own.mapped = external
            self._events.append(PortMappingChanged(external))
            self._update_record(now)

    # --- sightings (records are hints) ----------------------------------------------

    def receive_sighting(self, sighting: records.Sighting, source: str, now: float) -> None:
        """A record about some key: acted on only for a peer, and only as a hint."""
        if sighting.malformed:
            self._count("record-parts-malformed", sighting.malformed)
        public, m = sighting.public_key, self.membership
        if public == self.public_key or (m is not None and not self._draining
                                         and not m.take_budget(sighting, source, now)):
            return
        peer = self.device.peers.get(public)
        if m is not None:
            action, sighting, name = m.screen(sighting, source, now, peer is not None)
            if action == "reject" or (peer is None and action == "hint" and source == "dns"):
                self.lookups.reject(public, now)  # not a record of our mesh: not looked up for a while
            if action in ("drop", "reject"):
                return self._collect(now)
            if action == "admit" and (peer := self._admit(public, name, now)) is None:
                return
            self._collect(now)
        if peer is None:
            self._count("records-not-a-peer")  # discovery never makes a stranger a peer
            return self.strangers.put(sighting, source, now)
        addrs = []
        for ip, port in sighting.candidates:
            try:
                addrs.append(self.addr_of(str(ip), port))
            except (LocalError, OSError, ValueError):
                self._count("candidates-unusable")
        nat, probes = sighting.txt.get("nat"), sighting.txt.get("probe") == b"1"
        (self.probing.add if probes else self.probing.discard)(public)
        mapping = NAT_MAPPING.get(nat.decode("ascii", "replace")) if isinstance(nat, bytes) else None
        self.paths.sighting(public, addrs, source, now, traversal=self.traversal, local_networks=self.local_networks,
                            mapping=mapping, probes=probes)
        if self.traversal and not self.paths.selector.is_fresh(public, now) \
                and self.calls.answers(public, sighting.txt.get("call"), now):
            self.paths.selector.on_call(public, now)  # it has data for us: open our side now
        self._collect(now)

    def receive_goodbye(self, public: Key, source: str, now: float) -> None:
        """The peer withdrew its record from ``source`` (an mDNS goodbye, RFC 6762 §10.1): its
        candidates from there go, unless one is the live path (proven, not a hint). A mesh member
        with a live path is checked first (one probe): goodbyes are not authenticated."""
        m = self.membership
        if m is not None:
            m.discard_waiting(public)  # a record that waited for the budget is older
        if public not in self.device.peers:
            return self.strangers.discard(public)
        self._count("goodbyes")
        if m is None or not m.is_member(public):
            self.paths.goodbye(public, source, now)
            return self._collect(now)
        selector = self.paths.selector
        current = selector.current(public) if self.traversal else None
        if current is None or not selector.is_live(public, now) or not self.prober.has_peer(public):
            return self._mesh_remove(public, "goodbye", now)
        if m.goodbye(public, now):  # is it still there? (a rebind, or forged): one probe
            self.paths.probe(public, current, now)
            self._collect(now)

    # --- unicast lookups (proto/lookups.py) ---------------------------------------------

    def has_path(self, public: Key, now: float) -> bool:
        """A live session, or a verified path the selector would use."""
        if (peer := self.device.peers.get(public)) is None:
            return False
        return self.device.is_live(peer, now) or (self.traversal and self.paths.selector.best(public, now) is not None)

    def lookup_all(self, now: float) -> None:
        """Unicast DNS-SD just started: every peer, and the mesh's PTR set, at once."""
        self.lookups.record_changed(list(self.device.peers), now)

    def browse_found(self, found: Iterable[Key], now: float) -> None:
        """A browse of the mesh's PTR set (BrowseWanted) found ``found``: the keys to look up come
        back as LookupWanted (proto/lookups.py)."""
        self.lookups.browse_found(found, {self.public_key, *self.device.peers}, now)
        self._collect(now)

    # --- datagrams ------------------------------------------------------------------

    def receive_datagram(self, data: bytes | memoryview, addr: Addr, now: float, local: Hashable = None,
                         handshakes: list[Any] | None = None) -> bytes | None:
        """Any datagram of the tunnel socket, classified by its first bytes (ARCHITECTURE.md "The
        sockets"): WireGuard to the device (returns the inner packet for TUN), STUN to the NAT
        observer, path probes to the path driver, anything else dropped and counted. With
        ``handshakes``, WireGuard handshake messages are appended there (data first, issue 17)."""
        kind = classify(data)
        if kind == WIREGUARD:
            if handshakes is not None and data[0] != 4:
                handshakes.append((bytes(data), addr, local))
                return None
            return self.device.receive_datagram(data, addr, now, local)
        if kind == STUN:
            if not self.receive_stun(data, addr, now):
                self._drop("stun-unexpected")
        elif kind == PROBE:
            self.receive_probe(data, addr, now)
        else:
            self._drop("unknown-datagram")
        return None

    def receive_stun(self, data: bytes | memoryview, addr: Addr, now: float) -> bool:
        """A datagram classified as STUN: True if it answered one of our transactions."""
        if self.nat is None or not self.nat.receive(data, addr, now):
            return False
        self._collect(now)
        return True

    def receive_probe(self, data: bytes | memoryview, addr: Addr, now: float) -> None:
        """A datagram classified as a path probe (never raises; bad ones are counted)."""
        if not self.traversal:
            return self._count("probes-unexpected")
        event = self.paths.receive_probe(data, addr, now)
        self.birthdays.probe_seen(event, now)
        self.paths.probe_event(event, now)
        self._collect(now)  # the answer goes out now, not at the next timer

    # --- time -----------------------------------------------------------------------

    def next_deadline(self, now: float) -> float | None:
        """The earliest time ``handle_timer`` has work, the device's timers included."""
        times = [self.device.get_timer(), self.lookups.next_deadline(), self.strangers.next_deadline(),
                 self.calls.next_deadline()]
        if self.membership is not None:
            times.append(self.membership.next_deadline())
        if self.nat is not None:
            times.append(self.nat.next_deadline())
        if self.traversal:
            times += [self.paths.next_deadline(now), self.birthdays.next_deadline(now)]
        else:
            times.append(self.paths.trier.next_time())
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def run_timers(self, now: float) -> float | None:
        """The one drive step every shell uses (the data plane, the simulator): the timers that are
        due, then the next deadline (aioquic's ``handle_timer``/``get_timer`` pair)."""
        deadline = self.next_deadline(now)
        if deadline is not None and deadline <= now:
            self.handle_timer(now)
            deadline = self.next_deadline(now)
        return deadline

    def handle_timer(self, now: float) -> None:
        device = self.device
        if (due := device.get_timer()) is not None and due <= now:
            device.handle_timer(now)
        if self.nat is not None:
            self.nat.handle_timer(now)
        self.paths.hints_due(now)
        self.strangers.handle_timer(now)
        if (due := self.calls.next_deadline()) is not None and due <= now and self.calls.handle_timer(now):
            self._update_record(now)
        self._collect(now)
        m = self.membership
        if m is not None and (due := m.next_deadline()) is not None and due <= now:
            m.handle_timer(now, self._heard())
            self._collect(now)
            self._draining = True
            try:
                for sighting, source in m.drain(now):
                    self.receive_sighting(sighting, source, now)
            finally:
                self._draining = False
        if self.traversal:
            self.paths.handle_timer(now, self.nat is not None and self.nat.may_restun(now))
            self._collect(now)
            self.birthdays.step(now, self.paths.prober, self.behaviour, self.paths.suspected, self.paths.decided)
            self._collect(now)
        if (due := self.lookups.next_deadline()) is not None and due <= now:
            self.lookups.handle_timer(now, views.PathView(self, now))
            self._collect(now)

    def _collect(self, now: float) -> None:
        """The cores' datagrams and events into ours; those addressed to the node acted on here."""
        events = self.paths.pop_events() + self.birthdays.pop_events() + self.lookups.pop_events()
        self._outbox += self.paths.datagrams_to_send() + self.birthdays.datagrams_to_send()
        if self.nat is not None:
            self._outbox += self.nat.datagrams_to_send()
            events += self.nat.pop_events()
        if self.membership is not None:
            events += self.membership.pop_events()
        for event in events:
            if isinstance(event, MemberExpired):
                self._mesh_remove(event.peer, event.reason, now)
            elif isinstance(event, Suspected):
                self.lookups.look_now(event.peer, now, lost=True)
            elif isinstance(event, CheckWanted):
                self._check_member(event.peer, now)
            elif isinstance(event, CallWanted):
                if self.calls.call(event.peer, now):
                    self._update_record(now)
            elif isinstance(event, RelookWanted):  # a rotation: members not seen on the new key yet
                for public in event.peers:
                    self.lookups.look_now(public, now)
            elif isinstance(event, GoodbyeDue):
                if self._heard_since(event.peer, event.since):
                    self._count("mesh-goodbyes-refuted")  # it is still there: a rebind, or a forgery
                else:
                    self._mesh_remove(event.peer, "goodbye", now)
            else:
                self._events.append(event)
                if isinstance(event, NatSuspected) and self.nat is not None:
                    self.nat.restart(now)
                    self._collect(now)
                elif isinstance(event, NatClassified):
                    self._own_openness(now)
                elif isinstance(event, ReflexiveChanged):
                    self._own_openness(now)
                    if event.behaviour != self._own_mapping:
                        self._own_mapping = event.behaviour
                        self.paths.selector.set_own_mapping(event.behaviour, now)
                    self._update_record(now)
                    if event.moved and self.traversal:  # a router reboot: open the new mapping to each peer
                        self.paths.probe_current(now)  # (whose probe to our new record then gets in)
                elif isinstance(event, MeshAddressChanged):
                    self._moved(event, now)

    # --- our record (proto/ownrecord.py) -----------------------------------------------

    def record(self) -> records.ServiceRecord:
        """The record we publish (docs/records.md)."""
        return ownrecord.signed(self._body(), self.membership)

    def _body(self) -> records.ServiceRecord:
        return self.own.body(self.public_key, self.reflexive, self.behaviour, self.mesh_addresses(self.public_key),
                             self.calls.hints())

    def _update_record(self, now: float, force: bool = False) -> None:
        changed = self.own.update(self._body(), self.membership, self.device.wall_offset + now, force=force)
        if changed is not None:
            # both sides have published now: look again at once
            self.lookups.record_changed([p for p in self.device.peers if not self.has_path(p, now)], now)
            self._events.append(changed)

    # --- output ---------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        """Everything to send now, as (payload, address): the device's queue, then ours."""
        out = self.device.datagrams_to_send() if self.device.outbox else []
        self._outbox += self.paths.datagrams_to_send() + self.birthdays.datagrams_to_send()  # none left behind
        if self.nat is not None:
            self._outbox += self.nat.datagrams_to_send()
        if self._outbox:
            out += self._outbox
            self._outbox = []
        return out

    def next_event(self) -> Event | None:
        """The next event, or None. The device's events come first, in order."""
        if self.device.events:
            for event in self.device.events:
                self.history.absorb(event)
                if isinstance(event, HandshakeCompleted):
                    self.paths.trier.succeeded(event.peer)
                self._events.append(event)
            self.device.events.clear()
        return self._events.popleft() if self._events else None

    def pop_events(self) -> list[Event]:
        out = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def _drop(self, what: str) -> None:
        self.drops[what] = self.drops.get(what, 0) + 1
