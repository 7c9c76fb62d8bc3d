"""Path driving: probes, path choice and the endpoint decisions that follow (docs/nat-traversal.md).

``PathDriver`` joins three cores around the WireGuard ``Device``:

- ``Prober`` (proto/probe.py): authenticated path probes keyed from the two static keys. Every
  peer's probe is answered; an answer proves a path, a request from a new source is a
  peer-reflexive candidate (RFC 8445 §7.3.1.3).
- ``PathSelector`` (proto/paths.py): hole punching and the verified path to use.
- ``HintTrier`` (proto/hints.py): handshakes as the probe, for peers whose record does not say
  they answer probes (wireguard-go behind a hand-written record).

and decides endpoints: a verified path becomes the peer's endpoint (the lower key initiates at
once, the higher one after DEFER_INITIATION), WireGuard's roaming rule (whitepaper §2.1) has the
last word, and data that went unanswered for SUSPECT_AFTER makes the peer *suspected*: the
selector may switch to a verified alternative, the peer is looked up again (``Suspected``)
and our NAT mapping is checked (``NatSuspected``, when the node allows a STUN round). Pure:
``now`` passed in; datagrams out through ``datagrams_to_send()``, events through ``pop_events()``.
"""

from __future__ import annotations


import heapq
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from wgdisco.proto.device import Device
from wgdisco.proto.core import Core
from wgdisco.proto.events import CandidateProbed, HandshakeTried, NatSuspected, PathReasonChanged
from wgdisco.proto.hints import HintTrier
from wgdisco.proto.paths import VERIFIED, Candidate, PathSelector, host_kind
from wgdisco.proto.paths import Timing
from wgdisco.proto.pmtu import PathMtu
from wgdisco.proto.probe import MIN_REQUEST_SIZE, ProbeRequested, ProbeResult, Prober
from wgdisco.proto.timers import LIVE_TIME

__all__ = ["PathDriver", "Timing", "Suspected", "CallWanted", "SYNC_INTERVAL", "SUSPECT_AFTER", "DEFER_INITIATION"]

Addr = Hashable
Key = bytes

SYNC_INTERVAL = 0.5  # how often packets are synced into the selector; while data stays unanswered, how
# often our NAT may be checked (NatSuspected)
SUSPECT_AFTER = 2.0  # data sent, nothing authenticated back for this long: is our NAT mapping still ours?
DEFER_INITIATION = 1.0  # the higher key's wait before it initiates on a newly verified path
KICK_INTERVAL = 1.0  # a staged peer's handshake restarted on a proven path at most this often
FRESH_PROBES, FRESH_WINDOW = 4, 10.0  # a live peer's new candidates probed at once: 4 per 10 s


@dataclass(frozen=True)
class Suspected:
    """(For the node.) Data to ``peer`` went unanswered for SUSPECT_AFTER: look it up again."""

    peer: Key


@dataclass(frozen=True)
class CallWanted:
    """(For the node.) Data for ``peer`` after its NATed path was let go, or data that went
    unanswered: our holes towards it may have closed, ask it to call (our record's ``call=``)."""

    peer: Key


class PathDriver(Core):
    """Probes, the path selector and hint handshakes for one node's peers (sans-I/O)."""

    def __init__(
        self,
        device: Device,
        *,
        rng: Callable[[int], bytes],
        wall: float,
        host_of: Callable[[Addr], str],
        explain: Callable[[Key, str], str],
        timing: Timing = Timing(),
    ) -> None:
        super().__init__()
        self.device = device
        self._rng = rng
        self._wall = wall
        self._host_of = host_of
        self._explain = explain
        self.selector = PathSelector(timing=timing)
        self.prober = self._new_prober()
        self.trier = HintTrier(live_time=LIVE_TIME)
        self.pmtu = PathMtu(device.mtu)  # path MTU discovery on each peer's current path (issue 25)
        for public in device.peers:
            self.selector.add_peer(public)
        self.reasons: dict[Key, str] = {}
        self.suspected: dict[Key, float] = {}  # peer -> start of the silence that made us look again
        self.decided: set[Key] = set()  # the peers the last handle_timer decided for
        self._synced: dict[Key, float] = {}
        self._data_synced: dict[Key, float] = {}
        self._kicked: dict[Key, float] = {}
        self._deferred: dict[Key, tuple[float, Addr]] = {}  # peer -> (when, addr) to initiate
        self._fresh_probes: dict[Key, tuple[float, int]] = {}  # peer -> (window start, probes in it)
        self._watch: list[tuple[float, Key, float]] = []  # (check at, peer, unanswered since): a heap
        self._watching: dict[Key, float] = {}  # peer -> the unanswered_since it is watched for
        self._next_sync: float | None = None  # while a suspected peer stays unanswered
        self._synced_at = -SYNC_INTERVAL  # the last _sync

    def _new_prober(self) -> Prober:
        identity = self.device.identity
        return Prober(identity.private, identity.public, list(self.device.peers), rng=self._rng, wall=self._wall)

    # --- peers -------------------------------------------------------------------------

    def add_peer(self, public: Key) -> None:
        self.prober.add_peer(public)
        self.selector.add_peer(public)

    def remove_peer(self, public: Key) -> None:
        self.prober.remove_peer(public)
        self.selector.remove_peer(public)
        self.trier.forget(public)
        self.pmtu.remove_peer(public)
        for table in (self.reasons, self.suspected, self._synced, self._data_synced, self._deferred,
                      self._fresh_probes, self._kicked, self._watching):
            table.pop(public, None)

    def identity_changed(self) -> list[Key]:
        """New static keys: new probe keys; returns the peers the device dropped (one had our key),
        for the node to forget everywhere (``remove_peer`` here among the rest)."""
        self.prober = self._new_prober()  # probe keys come from the static keys (the device's peers)
        return list(self.selector.peers - self.device.peers.keys())

    # --- hints and candidates -------------------------------------------------------------

    def sighting(self, public: Key, addrs: list[Addr], source: str, now: float, *, traversal: bool,
                 local_networks: list[Any], mapping: str | None, probes: bool) -> None:
        """A record's candidates for peer ``public``: candidates to punch (traversal), or hinted
        endpoints for a handshake (a peer that does not answer probes)."""
        if traversal:
            self._add_candidates(public, addrs, source, now, local_networks)
            if mapping is not None:
                self.selector.set_peer_mapping(public, mapping, now)
            if probes:
                return  # it answers probes: the path selector alone decides (no handshake tries)
        peer = self.device.peers[public]
        live = self.device.is_live(peer, now) or (traversal and self.selector.best(public, now) is not None)
        if live:
            self._count("hints-ignored-live")
        self.trier.sighting(public, addrs, source, now, live=live)

    def goodbye(self, public: Key, source: str, now: float) -> None:
        """The peer withdrew its record from ``source``: its candidates from there go, unless
        one is the live path (proven, not a hint)."""
        stale = [p.addr for p in self.selector.paths(public) if p.source == source]
        if stale:
            self.selector.remove_candidates(public, stale, now)
        self.trier.forget(public)

    def _add_candidates(self, public: Key, addrs: list[Addr], source: str, now: float, local: list[Any]) -> None:
        cands = [Candidate(a, host_kind(self._host_of(a), local), source) for a in addrs]
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
                    self._count("candidate-probes-deferred")  # punching or keepalive rounds get to it
                    continue
                used += 1
                self._events.append(CandidateProbed(public, cand.addr, source))
                self.probe(public, cand.addr, now)
            self._fresh_probes[public] = (start, used)

    def networks_changed(self, local_networks: list[Any], now: float) -> None:
        """Our connected networks changed: a host candidate now on a shared subnet is a LAN one
        (a record seen before our own addresses were known; LAN paths need no NAT keepalive)."""
        for public in self.selector.peers:
            lan = [Candidate(p.addr, "lan", p.source) for p in self.selector.paths(public)
                   if p.kind == "host" and host_kind(self._host_of(p.addr), local_networks) == "lan"]
            if lan:
                self.selector.add_candidates(public, lan, now)

    # --- probes --------------------------------------------------------------------------

    def probe(self, public: Key, addr: Addr, now: float) -> None:
        self._outbox.append((self.prober.request(public, addr, now), addr))

    def probe_current(self, now: float) -> None:
        """One probe to every peer's current path (our network changed)."""
        for public in self.prober.peers:
            current = self.selector.current(public)
            if current is not None:
                self.probe(public, current, now)

    def receive_probe(self, data: bytes | memoryview, addr: Addr, now: float) -> ProbeResult | ProbeRequested | None:
        """A path probe datagram (never raises; bad ones are counted by the prober)."""
        received = self.prober.receive(bytes(data), addr, now)
        if received.reply is not None:
            self._outbox.append((received.reply, addr))
        return received.event

    def probe_event(self, event: ProbeResult | ProbeRequested | None, now: float) -> None:
        if isinstance(event, ProbeResult) and event.size != MIN_REQUEST_SIZE:  # a path MTU probe's
            self.pmtu.answered(event.peer, event.addr, event.size, event.rtt, now)
            self._pmtu_flush(now)
        elif isinstance(event, ProbeResult):
            self.selector.on_probe_result(event.peer, event.addr, event.rtt, now)
            self._kick_handshake(event.peer, event.addr, now)
        elif isinstance(event, ProbeRequested):
            self.selector.add_candidates(event.peer, [Candidate(event.addr, "prflx", "probe")], now)
            # its keepalive stands for ours: the higher key waits for the lower key's
            self.selector.on_probe_request(event.peer, event.addr, now, defer=self.device.identity.public > event.peer)
            if self.selector.current(event.peer) is None and not any(
                    p.addr == event.addr and p.state == VERIFIED for p in self.selector.paths(event.peer)):
                # ICE's triggered check (RFC 8445 §7.3.1.4): its request came through, so our NAT lets
                # it in now; a probe back verifies the path here within a round trip, not at our next
                # punching round (up to 4 s away). Paid from the peer's probe budget.
                if self.selector.take_probe(event.peer, now):
                    self._count("triggered-probes")
                    self.probe(event.peer, event.addr, now)
            self._kick_handshake(event.peer, event.addr, now)

    def _kick_handshake(self, public: Key, addr: Addr, now: float) -> None:
        """Data waits for a handshake and an authenticated probe just proved the path to the peer's
        endpoint (its call re-opened a closed path): initiate now, not at the 5 s retransmission
        (at most once a second)."""
        peer = self.device.peers.get(public)
        if peer is None or not peer.staged or peer.endpoint != addr or self.device.fast_sendable(peer, now):
            return
        if peer.last_handshake is None:
            return  # a first path: the endpoint decision's tie-break initiates (both at once would cross)
        if now - self._kicked.get(public, -KICK_INTERVAL) >= KICK_INTERVAL:
            self._kicked[public] = now
            self._count("handshakes-after-probe")
            self.device.try_endpoint(peer, addr, now, cause="probe")

    # --- time ----------------------------------------------------------------------------

    def next_deadline(self, now: float) -> float | None:
        times = [self.trier.next_time(), self.prober.get_timer(), self.selector.next_time(now), self._next_sync,
                 self.pmtu.next_deadline()]
        times += [when for when, _ in self._deferred.values()]
        if self._watch:
            times.append(self._watch[0][0])
        if self.selector.changed:
            times.append(now)  # a path changed (a probe answer, a record): decisions are due
        if self.device.touched:  # packets came or went: synced at most every SYNC_INTERVAL, so bulk
            times.append(max(now, self._synced_at + SYNC_INTERVAL))  # data wakes no timer per batch
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def hints_due(self, now: float) -> None:
        """Hinted endpoints whose turn came get a handshake initiation."""
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

    def handle_timer(self, now: float, restun_allowed: bool) -> None:
        """Probe timeouts, unanswered data, deferred initiations, punching rounds and endpoint
        decisions; ``restun_allowed``: a NatSuspected may ask for a STUN round now. The work is
        for the peers that changed or are due (the device's touched peers, the selector's heap,
        the watch on unanswered data): O(log n) per wake-up, not a scan of every peer (issue 26)."""
        device = self.device
        for timeout in self.prober.handle_timer(now):
            if timeout.size == MIN_REQUEST_SIZE:  # path MTU probes time out in proto/pmtu.py
                self.selector.on_probe_timeout(timeout.peer, timeout.addr, now)
        # before any decision: WireGuard's roaming rule (§2.1) has the last word, so the selector
        # must know where authenticated packets came from, or it would undo a roam
        touched = self._sync(now)
        self._suspect_dead_paths(now, restun_allowed)
        for public, (when, addr) in list(self._deferred.items()):
            if when <= now:
                del self._deferred[public]
                peer = device.peers.get(public)
                # the peer's initiation did not come (consumed, it left a session in ``next``: ours
                # now would only cross the handshake the peer is completing)
                if peer is not None and peer.current is None and peer.next is None:
                    device.try_endpoint(peer, addr, now, cause="probe")
        for public, addr in self.selector.probe_plan(now):
            if self.prober.has_peer(public):
                self.probe(public, addr, now)
        decided = self._apply_decisions(now, touched)
        self.decided = decided  # for the birthday driver's step (the peers whose paths changed)
        self._pmtu_step(now, decided)

    def _sync(self, now: float) -> set[Key]:
        """The device's touched peers: tell the selector which paths carried authenticated
        WireGuard packets (§2.1) and when data flowed (issue 26: keepalives and re-probing follow
        use; data for a peer whose NATed path was let go asks it to call us, CallWanted), and
        watch data that goes unanswered. Returns the touched peers' keys."""
        selector, keys = self.selector, set()
        self._synced_at = now
        for peer in self.device.pop_touched():
            public = peer.public_key
            if self.device.peers.get(public) is not peer:
                continue  # removed meanwhile
            keys.add(public)
            probes = self.prober.has_peer(public)
            last = peer.last_authenticated
            if last is not None and peer.endpoint is not None and last != self._synced.get(public):
                self._synced[public] = last
                self.suspected.pop(public, None)  # it answered: the silence is over
                if probes:
                    selector.on_authenticated(public, peer.endpoint, last)
            last = peer.last_data
            if last is not None and last != self._data_synced.get(public) and probes:
                self._data_synced[public] = last
                self.pmtu.used(public, last)
                # (or no current path any more: it was lost while idle, the far side may be closed)
                let_go = not selector.is_in_use(public, now) and (selector.needs_nat(public) or (
                    selector.current(public) is None and selector.last_ok(public) is not None))
                selector.on_data(public, last, now)
                if let_go:
                    self._count("calls-after-idle")
                    self._events.append(CallWanted(public))
            since = peer.unanswered_since  # proto/timers.py data_sent / authenticated_received
            if since is not None and self._watching.get(public) != since:
                self._watching[public] = since
                heapq.heappush(self._watch, (since + SUSPECT_AFTER + 0.001, public, since))  # "longer than"
        return keys

    def _suspect_dead_paths(self, now: float, restun: bool) -> None:
        """Data went out but nothing authenticated came back for SUSPECT_AFTER seconds. Our NAT
        may have a new address (a router got a new WAN address): STUN again at once, so the new
        reflexive address is re-published and the peer's probe to it re-opens the path. Or the
        peer moved: look its record up again at once, then on the growing schedule."""
        device, watch = self.device, self._watch
        while watch and watch[0][0] <= now:
            _, public, since = heapq.heappop(watch)
            peer = device.peers.get(public)
            if peer is None or peer.unanswered_since != since:
                continue  # answered meanwhile (or gone)
            if peer.current is None:  # no session yet: look again in a moment
                heapq.heappush(watch, (now + SYNC_INTERVAL, public, since))
                continue
            if self.suspected.get(public) != since:  # once per silence
                self.suspected[public] = since
                # a call asks the peer to open holes: a LAN path has none (one-way data, or a busy
                # peer, is silent too); the call would only change our record for every member
                call = self.selector.needs_nat(public) or self.selector.current(public) is None
                self.selector.on_unanswered(public, now)  # a verified alternative may take over now
                self._events.append(Suspected(public))
                if call:
                    self._events.append(CallWanted(public))  # the peer may need to open its side again
        # while a suspected peer stays unanswered, our NAT is checked whenever the node allows
        silent = [(public, since) for public, since in self.suspected.items()
                  if (peer := device.peers.get(public)) is not None and peer.unanswered_since == since
                  and peer.current is not None]
        if silent and restun:
            public, since = silent[0]
            self._events.append(NatSuspected(public, now - since))
        self._next_sync = now + SYNC_INTERVAL if silent else None

    def _apply_decisions(self, now: float, touched: set[Key]) -> set[Key]:
        """Endpoint decisions for the peers that changed; returns them."""
        device = self.device
        decided = self.selector.pop_changed() | touched
        for public in decided:
            peer = device.peers.get(public)
            if peer is None or not self.prober.has_peer(public):
                continue
            addr, reason = self.selector.decision(public, now)
            if reason != self.reasons.get(public):
                self.reasons[public] = reason
                self._events.append(PathReasonChanged(public, reason, self._explain(public, reason)))
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
        return decided

    # --- output --------------------------------------------------------------------------

    # --- path MTU (proto/pmtu.py) ------------------------------------------------------------

    def _pmtu_step(self, now: float, changed: set[Key]) -> None:
        """Each peer's path MTU search runs on the endpoint its session uses; unanswered data
        (proto/timers.py) is what a black hole looks like from here. ``changed``: the peers whose
        packets, path or endpoint changed (the others' searches need nothing new)."""
        pmtu = self.pmtu
        for public in changed:
            peer = self.device.peers.get(public)
            if peer is None or peer.endpoint is None or peer.current is None or not self.prober.has_peer(public):
                continue
            if pmtu.path_of(public) != peer.endpoint:
                on_link = any(p.addr == peer.endpoint and p.kind == "lan" for p in self.selector.paths(public))
                pmtu.set_path(public, peer.endpoint, ":" in self._host_of(peer.endpoint), now, on_link=on_link)
            pmtu.silence(public, peer.unanswered_since, now, peer.unanswered_largest, peer.large_received)
        if (due := pmtu.next_deadline()) is not None and due <= now:
            pmtu.handle_timer(now)
        self._pmtu_flush(now)

    def _pmtu_flush(self, now: float) -> None:
        """The search's probes out; a new limit goes to the device (packets over it: "too big")."""
        for want in self.pmtu.pop_probes():
            if self.prober.has_peer(want.peer):
                self._outbox.append((self.prober.request(want.peer, want.addr, now, size=want.size), want.addr))
        for event in self.pmtu.pop_events():
            peer = self.device.peers.get(event.peer)
            if peer is not None:
                self.device.set_path_limit(peer, event.inner)
            self._events.append(event)
