"""The node core: one node's peers, identity, own record, discovery hints, NAT traversal and
path choice, joined in one sans-I/O object (ARCHITECTURE.md, "Layers").

Theory of operation
-------------------
The node wraps the WireGuard ``Device`` (proto/device.py) and the policy cores around it:

- ``StunClient`` (proto/stun.py): Binding requests from the tunnel's own socket, so the mapping
  STUN sees is the one WireGuard uses; reflexive addresses become candidates in our own record.
- ``Prober`` (proto/probe.py): authenticated path probes keyed from the two static keys. Every
  peer's probe is answered; an answer proves a path, a request from a new source is a
  peer-reflexive candidate (RFC 8445 §7.3.1.3).
- ``PathSelector`` (proto/paths.py): hole punching and the verified path to use.
- ``HintTrier`` (proto/hints.py): handshakes as the probe, for peers whose record does not say
  they answer probes (wireguard-go behind a hand-written record).

Every change to the peer set or the identity goes through ``add_peer``/``remove_peer``/
``set_identity``/``set_port``, whoever asks (config, SIGHUP reload, ``wg set``, the mesh), so the
sub-cores never disagree about who is a peer. Records are hints (ARCHITECTURE.md, "Trust
model"): a sighting of a stranger's key is counted and dropped; a candidate is used only once a
probe answer or a handshake proves it; a live path is never moved by a record.

In: ``start``, ``network_changed``, ``receive_sighting``, ``receive_goodbye``, ``receive_stun``,
``receive_probe``, ``set_mapping`` (the gateway's port mapping, from proto/portmap.py through its
shell), ``handle_timer``. The device's own input (``send_packet``,
``receive_datagram``) stays on the hot path and goes to the device directly; the node learns of
authenticated traffic from ``Peer.last_authenticated`` and the device's events.
Out: ``datagrams_to_send()`` (the device's queue too), ``get_timer(now)``, ``next_event()``
(typed events below). ``now`` is monotonic seconds; addresses are opaque: ``addr_of(ip, port)``
makes one from a record's candidate (raising LocalError or ValueError when it cannot be used
here), ``host_of(addr)`` gives its IP literal back and ``format_addr(addr)`` shows it to people.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

from wgdisco.errors import DecodeError, LocalError
from wgdisco.proto import keys, records
from wgdisco.proto.birthday import EASY, HARD, AttemptFailed, BirthdayPuncher, SocketsClosed, SocketsWanted, public_ipv4
from wgdisco.proto.birthday import Timing as BirthdayTiming
from wgdisco.proto.device import Device, DeviceEvent, EndpointChanged, GaveUp, HandshakeCompleted, Peer
from wgdisco.proto.hints import HintTrier
from wgdisco.proto import names as namesmod
from wgdisco.proto.mesh import Mesh
from wgdisco.proto.natclass import NatClassifier
from wgdisco.proto.paths import HARD_MAPPINGS, Candidate, PathInfo, PathSelector, host_kind
from wgdisco.proto.paths import Timing as PathTiming
from wgdisco.proto.probe import ProbeRequested, ProbeResult, Prober
from wgdisco.proto.ratelimiter import TokenBucket
from wgdisco.proto.stun import REFRESH, StunChanged, StunClient, StunFailed
from wgdisco.proto.timers import LIVE_TIME

__all__ = [
    "Node", "NodeStats", "PathStatus",
    "HandshakeCompleted", "EndpointChanged", "GaveUp",
    "PathReasonChanged", "RecordChanged", "ReflexiveChanged", "StunFailed", "StunChanged",
    "CandidateProbed", "HandshakeTried", "NatSuspected", "LookupWanted",
    "PeerAdmitted", "PeerRemoved", "MeshAddressChanged", "PortMappingChanged",
    "BirthdayChanged", "NatClassified", "SocketsWanted", "SocketsClosed",
    "MeshNamesChanged", "AnnounceWanted",
    "NAT_TXT", "NAT_MAPPING", "REASON_TEXT", "srv_target",
]

Addr = Hashable
Key = bytes

STUN_REFRESH = REFRESH  # 25 s; also keeps the NAT mapping warm (RFC 4787 REQ-5)
SYNC_INTERVAL = 0.5  # how often unanswered traffic is checked for (see _suspect_dead_paths)
SUSPECT_AFTER = 2.0  # data sent, nothing authenticated back for this long: is our NAT mapping still ours?
RESTUN_MIN_INTERVAL = 10.0  # at most one such early STUN round per this many seconds
DEFER_INITIATION = 1.0  # the higher key's wait before it initiates on a newly verified path
FRESH_PROBES, FRESH_WINDOW = 4, 10.0  # a live peer's new candidates probed at once: 4 per 10 s
# The latest record of keys that are not (yet) peers, so that a peer added later (`wg set`, the
# mesh) is found at once: mDNS announces a record once, not again when we start caring about it.
# Strangers create these, so they are few and they expire (ARCHITECTURE.md, "Trust model").
MAX_STRANGERS = 64
# Unicast lookups (DNS-SD): a peer with a path is looked up every PollInterval (±10 %); one without
# is looked up at once, then after 0.5, 1, 2, 4 … s up to PollInterval, and at once again after our
# own record changed (the peer that looked first found nothing; now both have published).
LOOKUP_FIRST = 0.5
POLL_INTERVAL = 10.0
STRANGER_TTL = 600.0  # seconds
# Mesh mode (proto/mesh.py, docs/mesh.md): a mesh peer whose record was last seen this long ago
# and who has had no handshake for as long is removed; mesh peers get a persistent keepalive, so
# a live member handshakes at least every ~2 minutes (REJECT_AFTER_TIME) and is never removed.
MESH_EXPIRE = 300.0
MESH_CHECK_INTERVAL = 10.0
MESH_KEEPALIVE = 25
MESH_COUNTERS_KEPT = 1024  # last accepted record counter per key, kept after removal (replays)
# At most MESH_RECORDS_PER_SECOND records (bursts of MESH_RECORDS_BURST) are processed in mesh mode
# (MAC, admission, candidates): a LAN flooded with valid-looking records costs bounded work. Past
# the budget the newest record of each key waits (at most max(MeshMaxPeers, 64) keys; the oldest
# go past that, counted) and is processed as the budget refills. docs/mesh.md "Limits".
MESH_RECORDS_PER_SECOND = 100
MESH_RECORDS_BURST = 200
# A mesh peer admitted MESH_ANNOUNCE_AFTER ago and still without a handshake has probably not
# seen our record (an mDNS announcement lost while 40 members started at once): announce ours
# again (AnnounceWanted), then after 4, 8 … MESH_ANNOUNCE_MAX seconds while one is still unreached.
MESH_ANNOUNCE_AFTER = 2.0
MESH_ANNOUNCE_MAX = 60.0
# The mesh over unicast DNS-SD: the PTR set of _wireguard._udp.<domain> is browsed at once, then
# after 0.5, 1, 2 … s up to PollInterval, and at once again after our own record changed; keys
# found there that are not peers are looked up (at most MESH_BROWSE_LOOKUPS a round); a key whose
# record was not a valid one of our mesh is not looked up again for STRANGER_TTL (at most
# MESH_COUNTERS_KEPT such keys remembered).
MESH_BROWSE_LOOKUPS = 32
# mDNS goodbyes are not authenticated (RFC 6762 §10.1), and a member whose network changes sends
# them too before it announces again. A goodbye of a mesh peer with a live path is checked: one
# probe to that path; unless something authenticated comes from it within MESH_GOODBYE_CONFIRM,
# the peer is removed. A stopped member is removed after MESH_GOODBYE_CONFIRM, a live one stays.
MESH_GOODBYE_CONFIRM = 2.0
NAT_TXT = {"endpoint-independent": "easy", "endpoint-dependent": "hard"}  # TXT nat= (RFC 4787 terms)
NAT_MAPPING = {v: k for k, v in NAT_TXT.items()}
REASON_TEXT = {
    "lan": "direct on the LAN",
    "direct": "direct",
    "no-candidates": "no record found for it yet",
    "probing": "probing candidates",
    "probes-timed-out": "probes to every candidate timed out",
    "hard-nat-both-sides": "both NATs map per destination (hard NAT on both sides): no direct path",
}


def srv_target(public: bytes, domain: str) -> str:
    """Our SRV target host name: ``wg-<first 16 of the base32 key>.<domain>.`` (docs/records.md)."""
    return records.target_name(keys.key_to_base32(public), domain)


def put_newest(table: OrderedDict[Any, Any], key: Any, value: Any, cap: int) -> None:
    """``table[key] = value`` as the newest entry; past ``cap`` the oldest go (state a
    stranger can create is capped, ARCHITECTURE.md "Trust model")."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > cap:
        table.popitem(last=False)


# ---------------------------------------------------------------------- events


@dataclass(frozen=True)
class PathReasonChanged:
    """Why ``peer`` has the path it has (one of paths.REASONS), in words too."""

    peer: Key
    reason: str
    text: str


@dataclass(frozen=True)
class RecordChanged:
    """Our own record changed: publish ``record``. ``withdrawn`` names the instance label that
    must go (the identity changed), else None."""

    record: records.ServiceRecord
    withdrawn: str | None = None


@dataclass(frozen=True)
class ReflexiveChanged:
    """STUN sees us at ``reflexive`` ((ip, port) pairs); our NAT maps ``behaviour`` (RFC 4787)."""

    reflexive: tuple[tuple[str, int], ...]
    behaviour: str


@dataclass(frozen=True)
class CandidateProbed:
    """A live peer published a new candidate; it got one probe (it may have moved)."""

    peer: Key
    addr: Addr
    source: str


@dataclass(frozen=True)
class HandshakeTried:
    """A hinted endpoint got a handshake initiation (a peer that does not answer probes)."""

    peer: Key
    addr: Addr
    source: str


@dataclass(frozen=True)
class LookupWanted:
    """``peer`` should be looked up now (unicast DNS-SD): ask ``lookups_due``."""

    peer: Key


@dataclass(frozen=True)
class NatSuspected:
    """Data to ``peer`` went unanswered for ``silent_for`` seconds: STUN asks again."""

    peer: Key
    silent_for: float


@dataclass(frozen=True)
class PeerAdmitted:
    """A valid mesh record made ``peer`` a peer; ``addresses`` (its derived /32 and /128, computed
    here from its key) are its AllowedIPs, already inserted."""

    peer: Key
    addresses: tuple[Any, ...]


@dataclass(frozen=True)
class PeerRemoved:
    """The mesh removed ``peer``: ``reason`` is "goodbye" or "expired"."""

    peer: Key
    reason: str


@dataclass(frozen=True)
class NatClassified:
    """RFC 5780 tests (proto/natclass.py) found our NAT's ``filtering`` and, for a mapping that
    depends on the destination, whether on its ``mapping`` address only or its port too."""

    filtering: str
    mapping: str | None


@dataclass(frozen=True)
class BirthdayChanged:
    """A birthday punching attempt for ``peer`` (proto/birthday.py) started ("started", with our
    ``role``, HARD or EASY), found the path ("won") or ran out ("failed", then a backoff)."""

    peer: Key
    state: str
    role: str
    probes: int
    text: str


@dataclass(frozen=True)
class MeshAddressChanged:
    """The collision rule moved ``peer``'s IPv4 (a lower key arrived or left); ``peer`` may be our
    own key (then the interface address must follow). AllowedIPs already follow."""

    peer: Key
    old: Any
    new: Any


@dataclass(frozen=True)
class PortMappingChanged:
    """Our record now carries ``external`` (ip, port), the gateway's port mapping of our listen
    port (a candidate of kind "mapped"), or None: the mapping went."""

    external: tuple[str, int] | None


@dataclass(frozen=True)
class MeshNamesChanged:
    """The names that resolve on this host changed (docs/mesh.md "Names"): ``hosts`` is every
    (address, names) line to keep, ours included; ``contested`` the names two members claim."""

    hosts: tuple[tuple[str, tuple[str, ...]], ...]
    contested: tuple[str, ...]


@dataclass(frozen=True)
class AnnounceWanted:
    """``unreached`` mesh peers have had no handshake since they were admitted: announce our
    record again (mDNS), they may have missed it."""

    unreached: int


Event = (HandshakeCompleted | EndpointChanged | GaveUp | PathReasonChanged | RecordChanged
         | ReflexiveChanged | StunFailed | StunChanged | CandidateProbed | HandshakeTried | NatSuspected
         | LookupWanted | PeerAdmitted | PeerRemoved | MeshAddressChanged | PortMappingChanged
         | BirthdayChanged | NatClassified | SocketsWanted | SocketsClosed | MeshNamesChanged | AnnounceWanted)


@dataclass(frozen=True)
class PathStatus:
    """A peer's path for ``wgdisco status``: "lan", "direct" or "none", and why when none;
    for a live path, what it is based on (one of BASES)."""

    path: str
    reason: str | None
    reason_text: str | None
    basis: str | None = None


# what a live path is based on: a LAN address, a published candidate (host or STUN-reflexive),
# an address learnt from the peer's probe (peer-reflexive), a birthday-punched port (ours or the
# peer's), WireGuard's roaming rule, or the configured Endpoint
BASES = ("lan", "record", "peer-reflexive", "birthday", "roaming", "config")


@dataclass(frozen=True)
class NodeStats:
    probes_sent: int
    probe_replies: int
    probe_drops: dict[str, int]
    stun_errors: int
    counters: dict[str, int]


# ---------------------------------------------------------------------- the core


class Node:
    """One node's peers and identity, and the policy that finds paths to them (sans-I/O)."""

    def __init__(
        self,
        device: Device,
        *,
        rng: Callable[[int], bytes],
        wall: float,
        addr_of: Callable[[str, int], Addr],
        host_of: Callable[[Addr], str],
        format_addr: Callable[[Addr], str] = str,
        port: int,
        traversal: bool = True,
        stun_servers: Iterable[Addr] = (),
        domain: str = "local",
        allowed: Iterable[Any] = (),
        path_timing: PathTiming = PathTiming(),
        stun_refresh: float = STUN_REFRESH,
        poll_interval: float = POLL_INTERVAL,
        mesh: Mesh | None = None,
        via: Callable[[Addr, int], Addr] | None = None,
        via_socket: Callable[[Addr], int | None] = lambda addr: None,
        birthday_timing: BirthdayTiming = BirthdayTiming(),
        mesh_name: str | None = None,
    ) -> None:
        self.device = device
        self.mesh = mesh  # zero-config mesh (proto/mesh.py): records with its MAC admit their keys
        self.traversal = traversal  # probes and path choice: on with discovery or STUN
        self._rng = rng
        self._wall = wall
        self._addr_of = addr_of
        self._host_of = host_of
        self._format_addr = format_addr
        self._port = port
        self._domain = domain
        self._allowed = list(allowed)
        servers = list(stun_servers)
        self.stun = StunClient(servers, rng=rng, refresh=stun_refresh, host_of=host_of) if servers else None
        self.classifier = NatClassifier(rng=rng, addr_of=addr_of) if servers else None
        self._classify_pending = True  # run the RFC 5780 tests after the next answer naming an alternate
        self.selector = PathSelector(timing=path_timing)
        self.prober = self._new_prober()
        self.trier = HintTrier(live_time=LIVE_TIME)
        # birthday punching (proto/birthday.py): ``via(addr, id)`` is ``addr`` reached from our
        # extra socket ``id``, ``via_socket(addr)`` that id (None: the listen socket); without
        # ``via`` this node cannot open extra sockets and takes the hard role never
        self.birthday = BirthdayPuncher(rng=rng, timing=birthday_timing)
        self._via = via
        self._via_socket = via_socket
        self._birthday_found: dict[Key, Addr] = {}  # peer -> the address a birthday probe's answer proved
        self._birthday_sent: dict[Key, set[Addr]] = {}  # easy role: this attempt's probed addresses
        for public in device.peers:
            self.selector.add_peer(public)
        self._outbox: list[tuple[bytes, Addr]] = []
        self._events: deque[Event] = deque()
        self.local_networks: list[Any] = []
        self.host_addresses: list[Any] = []  # our interfaces' IPs (not link-local), for the record
        self.reflexive: list[tuple[str, int]] = []
        self.mapped: tuple[str, int] | None = None  # the gateway's port mapping (set_mapping)
        self.behaviour = "unknown"
        self._reasons: dict[Key, str] = {}
        self._synced: dict[Key, float] = {}
        self._deferred: dict[Key, tuple[float, Addr]] = {}  # peer -> (when, addr) to initiate
        self._endpoint_source: dict[Key, str] = {}
        self._handshakes: dict[Key, int] = {}
        self._path_changes: dict[Key, int] = {}
        self.counters: dict[str, int] = {}
        self._next_sync = 0.0
        self._last_restun = -RESTUN_MIN_INTERVAL
        self._record: records.ServiceRecord | None = None
        self.started = False
        self._strangers: OrderedDict[Key, tuple[float, records.Sighting, str]] = OrderedDict()
        self._poll_interval = poll_interval
        self._lookup_at: dict[Key, float] = {}  # peer -> when to look it up next (absent: now)
        self._lookup_step: dict[Key, float] = {}  # peer without a path -> its current backoff
        self._lookup_regular: set[Key] = set()  # peers looked up every PollInterval (they had a path)
        self._suspected: dict[Key, float] = {}  # peer -> start of the silence that made us look again
        self._fresh_probes: dict[Key, tuple[float, int]] = {}  # peer -> (window start, probes in it)
        # mesh state: peers it admitted -> [last valid record, admitted at]; IPv4 plan (with our key)
        self._mesh_peers: dict[Key, list[float]] = {}
        self._mesh_counters: OrderedDict[Key, int] = OrderedDict()
        self._mesh_v4: dict[Key, Any] = {}
        self._mesh_counter = int(wall * 1000)  # mc= of our record: Unix ms, strictly increasing
        self._next_mesh_check = 0.0
        self._body: records.ServiceRecord | None = None
        self.mesh_name = namesmod.check_name(mesh_name)  # ours, in name= (None: no name claimed)
        self._mesh_names: dict[Key, str] = {}  # mesh peer -> the name its last valid record claims
        self._hosts: MeshNamesChanged | None = None  # the last names plan announced
        self._mesh_budget = TokenBucket(MESH_RECORDS_PER_SECOND, MESH_RECORDS_BURST)
        self._mesh_waiting: OrderedDict[Key, tuple[records.Sighting, str]] = OrderedDict()
        self._mesh_draining = False
        self._announce_step = MESH_ANNOUNCE_AFTER  # the next wait between re-announcements
        self._browse_at = 0.0  # unicast mesh: when to browse the PTR set next
        self._mesh_leaving: dict[Key, float] = {}  # mesh peer -> when its goodbye came (being checked)
        self._browse_step = LOOKUP_FIRST
        self._mesh_rejected: OrderedDict[Key, float] = OrderedDict()  # key -> when its DNS record failed
        self._next_announce = 0.0  # when the unreached mesh peers are counted next
        if mesh is not None:
            self._mesh_v4 = mesh.assign_ipv4([self.public_key])

    def _new_prober(self) -> Prober:
        identity = self.device.identity
        return Prober(identity.private, identity.public, list(self.device.peers), rng=self._rng, wall=self._wall)

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
        self.prober.add_peer(public)
        self.selector.add_peer(public)
        seen = self._strangers.pop(public, None)
        if seen is not None and now - seen[0] < STRANGER_TTL:
            self.receive_sighting(seen[1], seen[2], now)
        return peer

    def remove_peer(self, public: Key) -> None:
        """Forget ``public`` everywhere: its session, probe keys, candidates, schedules."""
        self.device.remove_peer(public)
        self._forget(public)

    def _forget(self, public: Key) -> None:
        self.prober.remove_peer(public)
        self.selector.remove_peer(public)
        self.trier.forget(public)
        self.birthday.remove_peer(public)
        self._events.extend(self.birthday.pop_events())
        for table in (self._birthday_found, self._birthday_sent, self._reasons, self._synced, self._deferred, self._endpoint_source,
                      self._handshakes, self._path_changes, self._lookup_at, self._lookup_step,
                      self._suspected, self._fresh_probes):
            table.pop(public, None)
        self._lookup_regular.discard(public)

    def set_identity(self, private_key: bytes, now: float) -> None:
        """A new private key (``wg set private-key``): new sessions, probe keys and record."""
        old = self.device.identity.public
        self.device.set_private_key(private_key)
        if self.device.identity.public == old:
            return  # unchanged (wg syncconf resends it): nothing to redo
        for public in self.selector.peers - self.device.peers.keys():
            self._forget(public)  # the device dropped a peer that had our new key
        self.prober = self._new_prober()  # probe keys come from the static keys
        if self.mesh is not None:
            self._mesh_reassign(now)
        self._update_record(now)

    def set_port(self, port: int, now: float) -> None:
        """The listen port changed: the record and every reflexive address are stale."""
        if port == self._port:
            return
        self._port = port
        if self.stun is not None:
            self._restun(now)
        self._update_record(now)

    def set_endpoint(self, public: Key, addr: Addr | None, cause: str) -> None:
        """An endpoint from outside the node's own policy (config, uapi)."""
        peer = self.device.peers.get(public)
        if peer is not None:
            self.device.set_endpoint(peer, addr, cause)

    # --- the network ----------------------------------------------------------------

    def start(self, lan: Iterable[tuple[str, Any]], now: float) -> None:
        """Begin: our interfaces' addresses (``(ifname, ip_interface)``), then STUN. Again (a key
        came back after ``wg set private-key /dev/null``): as a network change."""
        if self.started:
            self.network_changed(lan, now)
            return
        self.started = True
        self._set_lan(lan)
        if self.stun is not None:
            self.stun.start(now)
            self._drain_stun(now)
        self._update_record(now)

    def network_changed(self, lan: Iterable[tuple[str, Any]], now: float) -> None:
        """Addresses came or went: new local networks, STUN again, probe every current path."""
        self._set_lan(lan)
        if self.stun is not None:
            # classified again (another network, maybe another NAT); not after a mere silence: the
            # first round's requests to the alternate port would still be let in (RFC 5780 §4.4)
            self._classify_pending = True
            self._restun(now)
        if self.traversal:
            for public in self.prober.peers:
                current = self.selector.current(public)
                if current is not None:
                    self._outbox.append((self.prober.request(public, current, now), current))
        self._update_record(now)

    def _set_lan(self, lan: Iterable[tuple[str, Any]]) -> None:
        lan = list(lan)
        self.local_networks = [ipaddress.ip_network(a.network) for _, a in lan]
        self.host_addresses = [a.ip for _, a in lan if not a.ip.is_link_local]

    def set_mapping(self, external: tuple[str, int] | None, now: float) -> None:
        """The gateway maps ``external`` (ip, port) to our listen port (PCP, NAT-PMP or UPnP IGD,
        proto/portmap.py): published as a candidate (kind "mapped", after the host addresses and
        before the STUN-reflexive ones, which a hard NAT makes useless); None: it went."""
        if external == self.mapped:
            return
        self.mapped = external
        self._events.append(PortMappingChanged(external))
        self._update_record(now)

    def _restun(self, now: float) -> None:
        assert self.stun is not None
        self.stun.restart(now)
        self._last_restun = now
        self._drain_stun(now)

    # --- sightings (records are hints) ----------------------------------------------

    def receive_sighting(self, sighting: records.Sighting, source: str, now: float) -> None:
        """A record about some key: acted on only for a peer, and only as a hint."""
        if sighting.malformed:
            self._count("record-parts-malformed", sighting.malformed)
        public = sighting.public_key
        if public == self.public_key:
            return
        if self.mesh is not None and not self._mesh_take_budget(sighting, source, now):
            return
        peer = self.device.peers.get(public)
        if self.mesh is not None:
            verdict, sighting, name = self._mesh_check(sighting)
            if verdict == "valid":
                if public in self._mesh_peers:
                    self._mesh_peers[public][0] = now
                elif peer is None:
                    peer = self._admit(public, now)
                    if peer is None:
                        return
                if public in self._mesh_peers:
                    self._mesh_set_name(public, name, now)
            elif verdict in ("invalid", "replay"):
                if source == "dns" and public not in self._mesh_peers:
                    put_newest(self._mesh_rejected, public, now, MESH_COUNTERS_KEPT)
                return  # claims our mesh without proof, or an old record: ignored (counted)
            elif public in self._mesh_peers:
                self._count("mesh-records-unauthenticated")  # a mesh peer's records need the MAC
                return
        if peer is None:
            if self.mesh is not None and source == "dns":  # another mesh's or no mesh's record
                put_newest(self._mesh_rejected, public, now, MESH_COUNTERS_KEPT)
            self._count("records-not-a-peer")  # discovery never makes a stranger a peer
            put_newest(self._strangers, public, (now, sighting, source), MAX_STRANGERS)
            return
        addrs = []
        for ip, port in sighting.candidates:
            try:
                addrs.append(self._addr_of(str(ip), port))
            except (LocalError, OSError, ValueError):
                self._count("candidates-unusable")
        if self.traversal:
            self._add_candidates(public, addrs, source, now)
            mapping = sighting.txt.get("nat")
            if isinstance(mapping, bytes) and mapping.decode("ascii", "replace") in NAT_MAPPING:
                self.selector.set_peer_mapping(public, NAT_MAPPING[mapping.decode()], now)
            if sighting.txt.get("probe") == b"1":
                return  # it answers probes: the path selector alone decides (no handshake tries)
        live = self.device.is_live(peer, now) or (self.traversal and self.selector.best(public, now) is not None)
        if live:
            self._count("hints-ignored-live")
        self.trier.sighting(public, addrs, source, now, live=live)

    def receive_goodbye(self, public: Key, source: str, now: float) -> None:
        """The peer withdrew its record from ``source`` (an mDNS goodbye, RFC 6762 §10.1):
        its candidates from there go, unless one is the live path (proven, not a hint)."""
        self._mesh_waiting.pop(public, None)  # a record that waited for the budget is older
        if public not in self.device.peers:
            self._strangers.pop(public, None)
            return
        if public in self._mesh_peers:
            self._count("goodbyes")
            current = self.selector.current(public) if self.traversal else None
            if current is not None and self.selector.is_live(public, now) and public in self.prober.peers:
                if public not in self._mesh_leaving:  # is it still there? (a rebind, or forged)
                    self._mesh_leaving[public] = now
                    self._outbox.append((self.prober.request(public, current, now), current))
                return
            self._mesh_remove(public, "goodbye", now)
            return
        stale = [p.addr for p in self.selector.paths(public) if p.source == source]
        if stale:
            self.selector.remove_candidates(public, stale, now)
        self.trier.forget(public)
        self._count("goodbyes")

    def _add_candidates(self, public: Key, addrs: list[Addr], source: str, now: float) -> None:
        cands = [Candidate(a, host_kind(self._host_of(a), self.local_networks), source) for a in addrs]
        known = self.selector.addresses(public)
        self.selector.add_candidates(public, cands, now)
        if self.selector.is_live(public, now):
            # a live peer's new candidate (it moved?) gets one probe now: it opens our NAT towards
            # it, and WireGuard's roaming rule switches once authenticated packets come from there.
            # A flood of forged candidates gets FRESH_PROBES per FRESH_WINDOW (and one log line each).
            fresh = [c for c in cands if c.addr not in known and c.addr in self.selector.addresses(public)]
            start, used = self._fresh_probes.get(public, (now, 0))
            if now - start >= FRESH_WINDOW:
                start, used = now, 0
            for cand in fresh:
                if used >= FRESH_PROBES or not self.selector.take_probe(public, now):
                    self._count("candidate-probes-deferred", 1)  # punching or keepalive rounds get to it
                    continue
                used += 1
                self._events.append(CandidateProbed(public, cand.addr, source))
                self._outbox.append((self.prober.request(public, cand.addr, now), cand.addr))
            self._fresh_probes[public] = (start, used)

    # --- the mesh ------------------------------------------------------------------

    def _mesh_check(self, sighting: records.Sighting) -> tuple[str, records.Sighting, str | None]:
        """"valid" (our mesh id, a good MAC, not older than the last accepted: the sighting comes
        back with only the candidates the MAC covers, and the name it claims if that is a valid
        name), "invalid", "replay", "other" (another mesh) or "none" (no mesh= key)."""
        assert self.mesh is not None
        txt = sighting.txt
        mesh_id = txt.get("mesh")
        if mesh_id is None:
            return "none", sighting, None
        if mesh_id != self.mesh.id.encode():
            self._count("records-other-mesh")
            return "other", sighting, None
        counter_text, mac = txt.get("mc"), txt.get("mac")
        raw_name = txt.get("name") or b""
        if counter_text is None or mac is None or not counter_text.isdigit() or len(counter_text) > 19 \
                or len(raw_name) > namesmod.MAX_NAME:
            self._count("mesh-records-invalid")
            return "invalid", sighting, None
        counter = int(counter_text)
        items = records.list_items(txt, "cand")
        claimed = raw_name.decode("utf-8", "replace")
        if not self.mesh.verify(sighting.public_key, ",".join(items), counter, mac, claimed):
            self._count("mesh-records-invalid")
            return "invalid", sighting, None
        last = self._mesh_counters.get(sighting.public_key)
        if last is not None and counter < last:
            self._count("mesh-records-replayed")
            return "replay", sighting, None
        name = namesmod.check_name(raw_name) if raw_name else None
        if raw_name and name is None:
            self._count("mesh-names-invalid")  # authenticated, but not a name we would write anywhere
        put_newest(self._mesh_counters, sighting.public_key, counter, MESH_COUNTERS_KEPT)
        covered = set()
        for item in items:
            try:
                covered.add(records.parse_candidate(item))
            except DecodeError:
                pass
        kept = [c for c in sighting.candidates if c in covered]
        return "valid", dataclasses.replace(sighting, candidates=kept), name

    def _admit(self, public: Key, now: float) -> Peer | None:
        """A valid mesh record of a stranger: a peer, AllowedIPs from its key (never the record)."""
        assert self.mesh is not None
        if len(self._mesh_peers) >= self.mesh.max_peers:
            self._count("mesh-peers-over-cap")
            return None
        self._strangers.pop(public, None)  # this sighting is newer
        peer = self.add_peer(public, now)
        self._mesh_peers[public] = [now, now]
        self.device.set_persistent_keepalive(peer, MESH_KEEPALIVE, now)
        self.device.allowed_ips.insert(ipaddress.ip_network(f"{self.mesh.ipv6_of(public)}/128"), peer)
        self._mesh_reassign(now)
        self._count("mesh-peers-admitted")
        self._events.append(PeerAdmitted(public, tuple(self.mesh_addresses(public))))
        return peer

    def _mesh_goodbyes_checked(self, now: float) -> None:
        """Peers whose goodbye came MESH_GOODBYE_CONFIRM ago: removed unless they were heard of
        since: a path answered (a probe answer or request, from any of its addresses: a member
        that moved announces from its new one), a WireGuard packet came, or a valid record of
        the mesh newer than the goodbye arrived (a rebind announces again)."""
        for public, since in list(self._mesh_leaving.items()):
            if since + MESH_GOODBYE_CONFIRM > now:
                continue
            del self._mesh_leaving[public]
            if public not in self._mesh_peers:
                continue
            peer = self.device.peers.get(public)
            heard = (self._mesh_peers[public][0] > since
                     or (peer is not None and peer.last_authenticated is not None and peer.last_authenticated > since)
                     or any(p.last_ok is not None and p.last_ok > since for p in self.selector.paths(public)))
            if heard:
                self._count("mesh-goodbyes-refuted")  # it is still there: a rebind, or a forgery
            else:
                self._mesh_remove(public, "goodbye", now)

    def _mesh_remove(self, public: Key, reason: str, now: float) -> None:
        self._mesh_leaving.pop(public, None)
        del self._mesh_peers[public]
        self.remove_peer(public)
        self._mesh_v4.pop(public, None)
        self._mesh_names.pop(public, None)
        self._mesh_reassign(now)
        self._count("mesh-peers-removed")
        self._events.append(PeerRemoved(public, reason))

    def _mesh_reassign(self, now: float) -> None:
        """The IPv4 plan over our key and the mesh peers; AllowedIPs follow every move."""
        assert self.mesh is not None
        own = self.public_key
        new = self.mesh.assign_ipv4([own, *self._mesh_peers])
        old = self._mesh_v4
        self._mesh_v4 = new
        for public, addr in new.items():
            before = old.get(public)
            if before == addr and public in old:
                continue
            peer = self.device.peers.get(public)
            if peer is not None:
                if before is not None:
                    self.device.allowed_ips.remove(ipaddress.ip_network(f"{before}/32"), peer)
                if addr is not None:
                    self.device.allowed_ips.insert(ipaddress.ip_network(f"{addr}/32"), peer)
            if public in old:
                self._events.append(MeshAddressChanged(public, before, addr))
                if public == own:
                    self._update_record(now)
        self._mesh_names_update()

    # --- mesh names (proto/names.py, docs/mesh.md "Names") ---------------------------

    def _mesh_set_name(self, public: Key, name: str | None, now: float) -> None:
        if self._mesh_names.get(public) == name:
            return
        if name is None:
            self._mesh_names.pop(public, None)
        else:
            self._mesh_names[public] = name
        self._mesh_names_update()

    def _mesh_claims(self) -> dict[Key, str | None]:
        return {self.public_key: self.mesh_name, **self._mesh_names}

    def _mesh_names_update(self) -> None:
        """Announce the names plan (MeshNamesChanged) when it differs from the last one."""
        if self.mesh is None:
            return
        plan = self.mesh_hosts()
        if plan != self._hosts:
            self._hosts = plan
            self._events.append(plan)

    def mesh_hosts(self) -> MeshNamesChanged:
        """Every member's addresses and names (ours first, then by key): its key name always, its
        claimed name unless two members claim it (then nobody gets it)."""
        assert self.mesh is not None
        claims = self._mesh_claims()
        owned, contested = namesmod.resolve(claims)
        lines = []
        for public in [self.public_key, *sorted(self._mesh_peers)]:
            names = [namesmod.key_name(keys.key_to_base32(public))]
            claimed = claims.get(public)
            if claimed is not None and owned.get(claimed) == public:
                names.insert(0, claimed)
            for net in self.mesh_addresses(public):
                lines.append((str(net.network_address), tuple(names)))
        return MeshNamesChanged(tuple(lines), tuple(sorted(contested)))

    def mesh_names_of(self, public: Key) -> list[str]:
        """The names that resolve to ``public`` on this host (its claimed name unless contested,
        then its key name): [] for a key that is not a member we know."""
        if self.mesh is None or (public != self.public_key and public not in self._mesh_peers):
            return []
        claimed, contested = self.mesh_name_of(public)
        key_name = namesmod.key_name(keys.key_to_base32(public))
        return [claimed, key_name] if claimed is not None and not contested else [key_name]

    def mesh_name_of(self, public: Key) -> tuple[str | None, bool]:
        """(the name ``public`` claims, whether another member claims it too); None: no name."""
        claims = self._mesh_claims()
        name = claims.get(public)
        if name is None:
            return None, False
        return name, sum(1 for n in claims.values() if n == name) > 1

    def _mesh_announce_check(self, now: float) -> None:
        """Mesh peers admitted MESH_ANNOUNCE_AFTER ago with no handshake yet: AnnounceWanted, on a
        doubling schedule while any stays unreached; the schedule starts over once none is."""
        unreached = 0
        for public, (_seen, admitted) in self._mesh_peers.items():
            peer = self.device.peers.get(public)
            if peer is not None and peer.last_handshake is None and now - admitted >= MESH_ANNOUNCE_AFTER:
                unreached += 1
        if unreached:
            self._count("mesh-announcements")
            self._events.append(AnnounceWanted(unreached))
            self._next_announce = now + self._announce_step
            self._announce_step = min(self._announce_step * 2, MESH_ANNOUNCE_MAX)
        else:
            self._announce_step = MESH_ANNOUNCE_AFTER
            self._next_announce = now + 1.0

    # --- the mesh's record budget ----------------------------------------------------

    def _mesh_take_budget(self, sighting: records.Sighting, source: str, now: float) -> bool:
        """True: process this record now. False: it waits (its key's newest record, at most
        max(MeshMaxPeers, 64) keys) until the budget refills (MESH_RECORDS_PER_SECOND)."""
        assert self.mesh is not None
        if self._mesh_draining:
            return True  # it waited, and has its token
        if self._mesh_waiting or not self._mesh_budget.take(now):  # those that wait go first
            self._count("mesh-records-deferred")
            cap = max(self.mesh.max_peers, MAX_STRANGERS)
            if len(self._mesh_waiting) >= cap and sighting.public_key not in self._mesh_waiting:
                self._count("mesh-records-dropped")
            put_newest(self._mesh_waiting, sighting.public_key, (sighting, source), cap)
            return False
        return True

    def _mesh_drain_waiting(self, now: float) -> None:
        """Records that waited for the budget, oldest first, while it lasts."""
        waiting = self._mesh_waiting
        self._mesh_draining = True
        try:
            while waiting and self._mesh_budget.take(now):
                _public, (sighting, source) = waiting.popitem(last=False)
                self.receive_sighting(sighting, source, now)
        finally:
            self._mesh_draining = False

    def _mesh_expire(self, now: float) -> None:
        """Remove mesh peers whose record is old and who have had no handshake for MESH_EXPIRE."""
        self._next_mesh_check = now + MESH_CHECK_INTERVAL
        for public, (seen, admitted) in list(self._mesh_peers.items()):
            peer = self.device.peers.get(public)
            last = max(admitted, peer.last_handshake or 0.0) if peer is not None else admitted
            if now - seen >= MESH_EXPIRE and now - last >= MESH_EXPIRE:
                self._mesh_remove(public, "expired", now)

    def is_mesh_peer(self, public: Key) -> bool:
        return public in self._mesh_peers

    def mesh_addresses(self, public: Key) -> list[Any]:
        """A key's derived addresses as host networks (/32, /128): [] without a mesh."""
        if self.mesh is None:
            return []
        out = []
        v4 = self._mesh_v4.get(public)
        if v4 is not None:
            out.append(ipaddress.ip_network(f"{v4}/32"))
        out.append(ipaddress.ip_network(f"{self.mesh.ipv6_of(public)}/128"))
        return out

    def own_mesh_interfaces(self) -> list[Any]:
        """Our derived addresses as /32 and /128 interfaces (the mesh prefixes get routes of their
        own, so an address can move without taking the prefix route along): [] without a mesh."""
        return [ipaddress.ip_interface(str(n)) for n in self.mesh_addresses(self.public_key)]

    def mesh_prefixes(self) -> list[Any]:
        """The mesh's IPv4 block and IPv6 /48 (routes through the interface): [] without a mesh."""
        return [] if self.mesh is None else [self.mesh.ipv4, self.mesh.ipv6]

    # --- unicast lookups ------------------------------------------------------------

    def has_path(self, public: Key, now: float) -> bool:
        """A live session, or a verified path the selector would use."""
        peer = self.device.peers.get(public)
        if peer is None:
            return False
        return self.device.is_live(peer, now) or (self.traversal and self.selector.best(public, now) is not None)

    def lookups_due(self, now: float) -> list[Key]:
        """The peers to look up now (unicast DNS-SD), each then scheduled again."""
        due = []
        for public in self.device.peers:
            path = self.has_path(public, now) and public not in self._suspected
            if public in self._lookup_regular and not path:  # it lost its path: look at once
                self._lookup_regular.discard(public)
                self._lookup_at[public] = now
            if self._lookup_at.get(public, now) > now:
                continue
            due.append(public)
            if path:
                self._lookup_step.pop(public, None)
                self._lookup_regular.add(public)
                jitter = 0.9 + 0.2 * int.from_bytes(self._rng(2), "big") / 65535  # no lockstep
                self._lookup_at[public] = now + self._poll_interval * jitter
            else:
                step = min(self._lookup_step.get(public, LOOKUP_FIRST), self._poll_interval)
                self._lookup_step[public] = step * 2
                self._lookup_at[public] = now + step
        return due

    def browse_due(self, now: float) -> bool:
        """Unicast DNS-SD in a mesh: browse the PTR set now? (Then scheduled again.)"""
        if self.mesh is None or now < self._browse_at:
            return False
        self._browse_at = now + min(self._browse_step, self._poll_interval)
        self._browse_step = min(self._browse_step * 2, self._poll_interval)
        return True

    def mesh_lookups(self, found: Iterable[Key], now: float) -> list[Key]:
        """Of the keys a browse found, those to look up: not us, not a peer (``lookups_due``
        has those), not one whose record recently was not valid; at most MESH_BROWSE_LOOKUPS."""
        rejected = self._mesh_rejected
        while rejected and next(iter(rejected.values())) + STRANGER_TTL <= now:
            rejected.popitem(last=False)
        out: list[Key] = []
        for public in found:
            if public == self.public_key or public in self.device.peers or public in rejected or public in out:
                continue
            if len(out) >= MESH_BROWSE_LOOKUPS:
                self._count("mesh-browse-lookups-deferred")
                break
            out.append(public)
        return out

    def next_lookup(self, now: float) -> float:
        """When ``lookups_due`` next has a peer: ``now`` for one never looked up, or one that
        was on the regular schedule and has lost its path; else the earliest scheduled time,
        or the moment a regular peer's session stops being live."""
        best = now + self._poll_interval
        if self.mesh is not None:
            best = min(best, max(self._browse_at, now))
        for public, peer in self.device.peers.items():
            at = self._lookup_at.get(public, now)
            if public in self._lookup_regular:
                if not self.has_path(public, now):
                    return now
                quiet = None if peer.last_authenticated is None else peer.last_authenticated + LIVE_TIME
                if quiet is not None and quiet > now:  # when the session stops being live
                    at = min(at, quiet)
            best = min(best, at)
        return best

    # --- datagrams ------------------------------------------------------------------

    def receive_stun(self, data: bytes | memoryview, addr: Addr, now: float) -> bool:
        """A datagram classified as STUN: True if it answered one of our transactions."""
        if self.stun is None:
            return False
        ok = self.stun.receive(bytes(data), addr, now)
        if ok:
            self._drain_stun(now)
        elif self.classifier is not None and self.classifier.receive(bytes(data), addr, now):
            self._classified()
            return True
        return ok

    # --- NAT classification (proto/natclass.py) ------------------------------------

    @property
    def filtering(self) -> str:
        """Our NAT's filtering (RFC 4787 §5), "unknown" until the RFC 5780 tests tell."""
        return self.classifier.filtering if self.classifier is not None and self.classifier.done else "unknown"

    @property
    def mapping_detail(self) -> str:
        """The mapping in RFC 4787 §4.1 terms: endpoint-dependent refined to address- or
        address-and-port-dependent when the RFC 5780 test could tell."""
        c = self.classifier
        if self.behaviour == "endpoint-dependent" and c is not None and c.done and c.mapping is not None:
            return c.mapping
        return self.behaviour

    def _classify(self, now: float) -> None:
        c, stun = self.classifier, self.stun
        if c is None or stun is None or not self._classify_pending:
            return
        for server in stun.servers:
            other, mapped = stun.alternate.get(server), stun.mapped.get(server)
            if other is not None and mapped is not None:
                self._classify_pending = False
                if c.start(server, self._host_of(server), mapped, other, now):
                    self._outbox.extend(c.datagrams_to_send())
                return

    def _classified(self) -> None:
        c = self.classifier
        if c is not None and c.done:
            self._events.append(NatClassified(c.filtering, c.mapping))

    def receive_probe(self, data: bytes | memoryview, addr: Addr, now: float) -> None:
        """A datagram classified as a path probe (never raises; bad ones are counted)."""
        if not self.traversal:
            self._count("probes-unexpected")
            return
        received = self.prober.receive(bytes(data), addr, now)
        if received.reply is not None:
            self._outbox.append((received.reply, addr))
        event = received.event
        if event is not None and self.birthday.role(event.peer) == EASY and self._via_socket(event.addr) is None \
                and event.addr in self._birthday_sent.get(event.peer, ()):
            # a random-port birthday probe hit: the answer (authenticated, to a request we sent
            # there), or the hard side's probe through the hole ours opened, names its mapped port
            if self._birthday_found.get(event.peer) != event.addr:
                self._birthday_found[event.peer] = event.addr
                self._count("birthday-hits")
            if event.addr not in self.selector.addresses(event.peer):
                self.selector.add_candidates(event.peer, [Candidate(event.addr, "prflx", "probe")], now)
        if isinstance(event, ProbeResult):
            self.selector.on_probe_result(event.peer, event.addr, event.rtt, now)
        elif isinstance(event, ProbeRequested):
            self.selector.add_candidates(event.peer, [Candidate(event.addr, "prflx", "probe")], now)
            # its keepalive stands for ours: the higher key waits for the lower key's
            self.selector.on_probe_request(event.peer, event.addr, now, defer=self.public_key > event.peer)

    # --- time -----------------------------------------------------------------------

    def get_timer(self, now: float) -> float | None:
        """The earliest time ``handle_timer`` has work, the device's timers included."""
        best = self.device.get_timer()
        times = [self.trier.next_time()]
        if self._strangers:
            times.append(next(iter(self._strangers.values()))[0] + STRANGER_TTL)
        if self._mesh_peers:
            times.append(self._next_mesh_check)
        if self._mesh_waiting:
            times.append(self._mesh_budget.ready_at())
        if self._mesh_peers:
            times.append(self._next_announce)
        if self._mesh_leaving:
            times.append(min(self._mesh_leaving.values()) + MESH_GOODBYE_CONFIRM)
        if self.stun is not None:
            times.append(self.stun.get_timer())
        if self.classifier is not None:
            times.append(self.classifier.get_timer())
        if self.traversal:
            times += [self.prober.get_timer(), self.selector.next_time(now), self._next_sync]
            times += [when for when, _ in self._deferred.values()]
            times.append(self.birthday.next_time(now))
        for t in times:
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now: float) -> None:
        device = self.device
        deadline = device.get_timer()
        if deadline is not None and deadline <= now:
            device.handle_timer(now)
        if self.stun is not None:
            self.stun.handle_timer(now)
            self._drain_stun(now)
        if self.classifier is not None:
            due = self.classifier.get_timer()
            if due is not None and due <= now:
                self.classifier.handle_timer(now)
                self._outbox.extend(self.classifier.datagrams_to_send())
                self._classified()
        self._try_hints(now)
        strangers = self._strangers
        while strangers and next(iter(strangers.values()))[0] + STRANGER_TTL <= now:
            strangers.popitem(last=False)
        if self._mesh_peers and now >= self._next_mesh_check:
            self._mesh_expire(now)
        if self._mesh_waiting:
            self._mesh_drain_waiting(now)
        if self._mesh_peers and now >= self._next_announce:
            self._mesh_announce_check(now)
        if self._mesh_leaving:
            self._mesh_goodbyes_checked(now)
        if not self.traversal:
            return
        for timeout in self.prober.handle_timer(now):
            self.selector.on_probe_timeout(timeout.peer, timeout.addr, now)
        # before any decision: WireGuard's roaming rule (§2.1) has the last word, so the selector
        # must know where authenticated packets came from, or it would undo a roam
        self._sync_authenticated()
        if now >= self._next_sync:
            self._suspect_dead_paths(now)
            self._next_sync = now + SYNC_INTERVAL
        for public, (when, addr) in list(self._deferred.items()):
            if when <= now:
                del self._deferred[public]
                peer = device.peers.get(public)
                if peer is not None and peer.current is None:  # the peer's initiation did not come
                    device.try_endpoint(peer, addr, now, cause="probe")
        for public, addr in self.selector.probe_plan(now):
            if public in self.prober.peers:
                self._outbox.append((self.prober.request(public, addr, now), addr))
        self._apply_decisions(now)
        self._birthday(now)

    def _try_hints(self, now: float) -> None:
        device = self.device
        due = self.trier.next_time()
        if due is None or due > now:
            return

        def live(key: Key) -> bool:
            peer = device.peers.get(key)
            return peer is None or device.is_live(peer, now)

        for attempt in self.trier.due(now, live):
            peer = device.peers.get(attempt.peer)
            if peer is not None:
                device.try_endpoint(peer, attempt.endpoint, now, cause=attempt.source)
                self._count("handshake-tries")
                self._events.append(HandshakeTried(attempt.peer, attempt.endpoint, attempt.source))

    def _sync_authenticated(self) -> None:
        """Tell the selector which paths carried authenticated WireGuard packets (§2.1)."""
        for public, peer in self.device.peers.items():
            last = peer.last_authenticated
            if last is not None and peer.endpoint is not None and last != self._synced.get(public):
                self._synced[public] = last
                self._suspected.pop(public, None)  # it answered: the silence is over
                if public in self.prober.peers:
                    self.selector.on_authenticated(public, peer.endpoint, last)

    def _suspect_dead_paths(self, now: float) -> None:
        """Data went out but nothing authenticated came back for SUSPECT_AFTER seconds. Our NAT
        may have a new address (a router got a new WAN address): STUN again at once, so the new
        reflexive address is re-published and the peer's probe to it re-opens the path. Or the
        peer moved: look its record up again at once, then on the growing schedule."""
        t = self.device.timing
        restun = self.stun is not None and now - self._last_restun >= RESTUN_MIN_INTERVAL
        for public, peer in self.device.peers.items():
            if peer.t_new_handshake is None or peer.current is None:
                continue
            # timersDataSent set t_new_handshake = first unanswered send + KEEPALIVE + REKEY_TIMEOUT + jitter
            unanswered_since = peer.t_new_handshake - t.keepalive_timeout - t.rekey_timeout - t.rekey_timeout_jitter_max
            if now - unanswered_since <= SUSPECT_AFTER:
                continue
            if self._suspected.get(public) != unanswered_since:  # once per silence
                self._suspected[public] = unanswered_since
                self.selector.on_unanswered(public, now)  # a verified alternative may take over now
                self._lookup_regular.discard(public)
                self._lookup_step.pop(public, None)
                self._lookup_at[public] = now
                self._events.append(LookupWanted(public))
            if restun:
                restun = False
                self._events.append(NatSuspected(public, now - unanswered_since))
                self._restun(now)

    def _apply_decisions(self, now: float) -> None:
        device = self.device
        for public, peer in device.peers.items():
            if public not in self.prober.peers:
                continue
            addr, reason = self.selector.decision(public, now)
            if reason != self._reasons.get(public):
                self._reasons[public] = reason
                self._events.append(PathReasonChanged(public, reason, self.explain(public, reason)))
            if addr is None or addr == peer.endpoint:
                continue
            if peer.current is None and device.identity.public > public:
                # Both sides verify the path in the same instant; if both initiated, each would
                # consume the other's initiation and wait as responder until the 5 s retransmit.
                # The lower key initiates now, the higher one after a second.
                device.set_endpoint(peer, addr, "probe")
                self._deferred[public] = (now + DEFER_INITIATION, addr)
            elif peer.current is None:
                device.try_endpoint(peer, addr, now, cause="probe")
            else:
                device.set_endpoint(peer, addr, "probe")

    # --- birthday punching (proto/birthday.py) ----------------------------------------

    def _birthday_role(self, public: Key) -> str | None:
        """HARD when our NAT is hard and the peer's easy, EASY the other way round; None when
        neither or both are hard (then nothing can be guessed, the selector says so)."""
        ours, theirs = self.behaviour, self.selector.peer_mapping(public)
        if ours in HARD_MAPPINGS and theirs == "endpoint-independent" and self._via is not None:
            return HARD
        if ours == "endpoint-independent" and theirs in HARD_MAPPINGS:
            return EASY
        return None

    def _birthday_targets(self, public: Key, role: str) -> list[Any]:
        """The peer's public IPv4 candidates: addresses (HARD) or IPs (EASY)."""
        out: list[Any] = []
        paths = sorted(self.selector.paths(public), key=lambda p: -p.last_seen)  # the newest first
        for path in paths:  # records' candidates, and its probes' sources
            if path.kind == "lan" or path.family != 4 or self._via_socket(path.addr) is not None:
                continue
            host = self._host_of(path.addr)
            if public_ipv4(host):
                out.append(path.addr if role == HARD else host)
        out = list(dict.fromkeys(out))
        # the hard side aims at the newest address only: an easy peer has one reflexive address per
        # family, and an older one is where it was (a round at it would be wasted)
        return out[:1] if role == HARD else out

    def _birthday(self, now: float) -> None:
        b, selector = self.birthday, self.selector
        startable = []
        for public in self.prober.peers:
            live = selector.is_live(public, now)
            current = selector.current(public)
            sid = self._via_socket(current) if current is not None else None
            if b.running(public):
                if live and public not in self._suspected:
                    role = b.role(public) or ""
                    b.won(public, sid, now)
                    self._birthday_sent.pop(public, None)
                    self._count("birthday-wins")
                    self._events.append(BirthdayChanged(public, "won", role, b.probes_sent, (
                        f"birthday punching found the path {self._format_addr(current)}")))
                    continue
            elif b.kept(public) is not None and (not live or sid != b.kept(public)):
                b.release(public)  # the path moved away from (or died on) the punched socket
                self._events.append(BirthdayChanged(public, "released", "", b.probes_sent, (
                    "the birthday-punched socket is closed: " + (
                        "the path died" if not live else f"the path moved to {self._format_addr(current)}"))))
            # no live path, or data over it went unanswered (the peer or our NAT moved: a
            # punched port does not follow, a new attempt must find one)
            lost = not live or public in self._suspected
            role = b.role(public)
            if lost and role is not None:
                if self._birthday_targets(public, role)[:1] != b.targets(public)[:1]:
                    b.abort(public)  # the peer published a new address: aim there
                    b.reset_backoff(public)
            if lost and b.may_start(public, now):
                startable.append(public)
        for send in b.plan(now):
            if send.peer not in self.prober.peers:
                continue
            if send.socket is not None:
                assert self._via is not None
                addr = self._via(send.addr, send.socket)
            else:
                try:
                    addr = self._addr_of(str(send.host), int(send.port or 0))
                except (LocalError, OSError, ValueError):
                    continue
                self._birthday_sent.setdefault(send.peer, set()).add(addr)
            self._outbox.append((self.prober.request(send.peer, addr, now), addr))
        # new attempts send from the next call on: the shell opens their sockets (SocketsWanted)
        # after sending what is queued now
        for public in startable:
            self._birthday_start(public, now)
        self._birthday_events(now)

    def _birthday_start(self, public: Key, now: float) -> None:
        b = self.birthday
        role = self._birthday_role(public)
        since = self.selector.punching_since(public)
        if role is None or (public not in self._suspected and (since is None or now - since < b.timing.start_after)):
            return
        targets = self._birthday_targets(public, role)
        if b.start(public, role, targets, now):
            self._count("birthday-attempts")
            self._birthday_sent[public] = set()
            t = b.timing
            what = (f"{t.sockets} extra ports towards {', '.join(self._format_addr(a) for a in targets[:t.max_targets])}"
                    if role == HARD else f"up to {t.probes} random ports at {', '.join(targets[:t.max_targets])}")
            whose = "our NAT" if role == HARD else "the peer's NAT"
            self._events.append(BirthdayChanged(public, "started", role, b.probes_sent, (
                f"birthday punching ({whose} is the hard one): {what}, at most {t.rate:g} probes/s")))

    def _birthday_events(self, now: float) -> None:
        b = self.birthday
        for event in b.pop_events():
            if isinstance(event, SocketsClosed):
                # paths over closed sockets are gone: never chosen, never probed again
                closed = set(event.ids)
                for public in self.prober.peers:
                    stale = [p.addr for p in self.selector.paths(public) if self._via_socket(p.addr) in closed]
                    if stale:
                        self.selector.remove_candidates(public, stale, now)
            if isinstance(event, AttemptFailed):
                self._birthday_sent.pop(event.peer, None)
                self._count("birthday-failures")
                self._events.append(BirthdayChanged(event.peer, "failed", event.role, b.probes_sent, (
                    f"birthday punching found no path; next attempt in {event.pause:g} s")))
            else:
                self._events.append(event)

    # --- STUN results ---------------------------------------------------------------

    def _drain_stun(self, now: float) -> None:
        assert self.stun is not None
        self._outbox.extend(self.stun.datagrams_to_send())
        events = self.stun.pop_events()
        if not events:
            return
        for event in events:
            if isinstance(event, (StunFailed, StunChanged)):
                self._events.append(event)
        self._classify(now)
        reflexive = self.stun.reflexive()
        behaviour = self.stun.mapping_behaviour()
        if behaviour != self.behaviour:
            self.selector.set_own_mapping(behaviour, now)
        if reflexive != self.reflexive or behaviour != self.behaviour:
            self.reflexive, self.behaviour = reflexive, behaviour
            self._events.append(ReflexiveChanged(tuple(reflexive), behaviour))
            self._update_record(now)

    # --- our record -----------------------------------------------------------------

    def record(self) -> records.ServiceRecord:
        """The record we publish: wgsd layout plus our candidates, ``probe=1`` and ``nat=``; in a
        mesh also ``mesh=``, ``mc=`` and ``mac=`` (docs/records.md)."""
        body = self._record_body()
        if self.mesh is None:
            return body
        counter = self._mesh_counter
        extra = {**body.txt_extra, "mesh": self.mesh.id, "mc": str(counter), "mac": "A" * 24}
        if self.mesh_name is not None:
            extra["name"] = self.mesh_name
        draft = dataclasses.replace(body, txt_extra=extra)  # the MAC's size, so the same candidates fit
        txt, _ = records.parse_txt(records.build_txt(draft))
        cand = ",".join(records.list_items(txt, "cand"))
        extra["mac"] = self.mesh.mac(body.public_key, cand, counter, self.mesh_name or "")
        return dataclasses.replace(body, txt_extra=extra)

    def _record_body(self) -> records.ServiceRecord:
        public = self.public_key
        port = self._port
        candidates: list[Any] = [(ip, port) for ip in self.host_addresses]
        if self.mapped is not None:
            candidates.append((ipaddress.ip_address(self.mapped[0]), self.mapped[1]))
        for ip, rport in self.reflexive:
            c = (ipaddress.ip_address(ip), rport)
            if c not in candidates:
                candidates.append(c)
        extra: dict[str, str | bytes | None] = {}
        if self.traversal:
            extra["probe"] = "1"  # we answer wgdisco path probes (docs/records.md)
        nat = NAT_TXT.get(self.behaviour)
        if nat is not None:
            extra["nat"] = nat
        allowed = [ipaddress.ip_network(f"{a.ip}/{a.max_prefixlen}") for a in self._allowed]
        allowed += [n for n in self.mesh_addresses(public) if n not in allowed]
        return records.ServiceRecord(
            public_key=public, port=port, target=srv_target(public, self._domain),
            addresses=list(self.host_addresses),
            allowed=allowed,
            candidates=candidates, txt_extra=extra,
        )

    def _update_record(self, now: float) -> None:
        body = self._record_body()
        old = self._record
        if old is not None and body == self._body:
            return
        self._body = body
        if self.mesh is not None:  # a newer record: a higher counter (older ones are replays)
            self._mesh_counter = max(self._mesh_counter + 1, int((self.device.wall_offset + now) * 1000))
        record = self.record()
        self._record = record
        for public in self.device.peers:  # both sides have published now: look again at once
            if not self.has_path(public, now):
                self._lookup_at[public] = now
                self._lookup_step.pop(public, None)
        self._browse_at, self._browse_step = now, LOOKUP_FIRST  # the mesh over DNS too
        withdrawn = old.instance_label if old is not None and old.public_key != record.public_key else None
        self._events.append(RecordChanged(record, withdrawn))

    # --- output ---------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        """Everything to send now, as (payload, address): the device's queue, then ours."""
        out = self.device.datagrams_to_send() if self.device.outbox else []
        if self._outbox:
            out += self._outbox
            self._outbox = []
        return out

    def next_event(self) -> Event | None:
        """The next event, or None. The device's events come first, in order."""
        if self.device.events:
            for event in self.device.events:
                self._absorb(event)
            self.device.events.clear()
        return self._events.popleft() if self._events else None

    def _absorb(self, event: DeviceEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self._handshakes[event.peer] = self._handshakes.get(event.peer, 0) + 1
            self.trier.succeeded(event.peer)
        elif isinstance(event, EndpointChanged):
            self._endpoint_source[event.peer] = event.cause
            if event.old is not None:
                self._path_changes[event.peer] = self._path_changes.get(event.peer, 0) + 1
        self._events.append(event)

    # --- views (status, metrics) ------------------------------------------------------

    def explain(self, public: Key, reason: str) -> str:
        """The reason for a peer's path in words, with which NAT is hard when that is why."""
        text = REASON_TEXT.get(reason, reason)
        if reason == "probes-timed-out":
            hard = []
            if self.behaviour == "endpoint-dependent":
                hard.append("this side's NAT maps per destination (hard NAT)")
            if self.selector.peer_mapping(public) in ("endpoint-dependent", "address-dependent",
                                                      "address-and-port-dependent"):
                hard.append("the peer's NAT maps per destination (hard NAT)")
            if hard:
                text += "; " + " and ".join(hard) + ": no direct path"
        return text

    def path_status(self, public: Key, now: float) -> PathStatus:
        peer = self.device.peers[public]
        live = self.device.is_live(peer, now, self.device.timing.reject_after_time) and peer.current is not None
        reason = self._reasons.get(public)
        if live and peer.endpoint is not None:
            lan = host_kind(self._host_of(peer.endpoint), self.local_networks) == "lan"
            return PathStatus("lan" if lan else "direct", None, None, self.path_basis(public))
        if reason is not None and reason not in ("lan", "direct"):
            return PathStatus("none", reason, self.explain(public, reason))
        if peer.endpoint is None:
            return PathStatus("none", "no-endpoint", "no Endpoint configured and nothing discovered yet")
        return PathStatus("none", "no-handshake", f"no handshake with {self._format_addr(peer.endpoint)} yet")

    def path_basis(self, public: Key) -> str | None:
        """What the peer's endpoint is based on (one of BASES), None without one."""
        peer = self.device.peers.get(public)
        if peer is None or peer.endpoint is None:
            return None
        endpoint = peer.endpoint
        if self._via_socket(endpoint) is not None or self._birthday_found.get(public) == endpoint:
            return "birthday"
        if host_kind(self._host_of(endpoint), self.local_networks) == "lan":
            return "lan"
        info = next((p for p in self.selector.paths(public) if p.addr == endpoint), None)
        if info is None:
            return "config" if self._endpoint_source.get(public) == "config" else "roaming"
        if info.kind == "lan":
            return "lan"
        if info.source in ("mdns", "dns"):
            return "record"
        if info.source == "config":
            return "config"
        return "peer-reflexive" if info.source == "probe" else "roaming"

    def socket_of(self, addr: Addr) -> int | None:
        """The extra (birthday) socket an address is reached from, None for the listen socket."""
        return self._via_socket(addr)

    @property
    def strangers(self) -> int:
        """Records of non-peers kept (at most MAX_STRANGERS)."""
        return len(self._strangers)

    def endpoint_source(self, public: Key) -> str | None:
        peer = self.device.peers.get(public)
        return self._endpoint_source.get(public) if peer is not None and peer.endpoint is not None else None

    def candidates(self, public: Key) -> list[PathInfo]:
        return self.selector.paths(public)

    def handshakes(self, public: Key) -> int:
        return self._handshakes.get(public, 0)

    def path_changes(self, public: Key) -> int:
        return self._path_changes.get(public, 0)

    def stats(self) -> NodeStats:
        c = self.stun.counters if self.stun is not None else None
        return NodeStats(
            probes_sent=self.selector.probes_sent, probe_replies=self.prober.replies,
            probe_drops=dict(self.prober.drops),
            stun_errors=c.timeouts + c.error_responses if c is not None else 0,
            counters={**self.counters, **{k: v for k, v in (
                ("candidates-dropped", self.selector.candidates_dropped),
                ("probes-over-budget", self.selector.probes_over_budget),
                ("birthday-probes", self.birthday.probes_sent)) if v}},
        )

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n
