"""The WireGuard device: peers, keypairs, timers, send and receive (sans-I/O).

Theory of operation
-------------------
The shell feeds the device three things and drains one:

- ``send_packet(packet, now)``: an IP packet read from the TUN device. The
  common case returns ``(datagram, endpoint)`` to send at once; otherwise the
  packet is staged while a handshake is initiated.
- ``receive_datagram(data, addr, now, local=None)``: a WireGuard datagram from the UDP
  socket (``local``: where it arrived, see below). Returns the decrypted inner IP packet
  to write to TUN, or None.
  Malformed or unauthenticated input is dropped and counted in ``drops``;
  this method never raises for anything the network sends.
- ``handle_timer(now)`` when ``get_timer()`` is due.
- ``tun_out``: packets for TUN from the device itself: with ``unreachable`` set, the ICMP
  "unreachable" answering a packet no peer takes (or whose peer has no endpoint), as the
  kernel module does (proto/icmp.py); with ``too_big`` set, the ICMP "too big" answering a
  packet larger than its peer's ``max_inner`` (the path MTU found by proto/pmtu.py; an IPv4
  packet without DF goes in fragments instead). The shell writes and clears it.
- ``datagrams_to_send()``: the datagrams ``(bytes, addr)`` the device wants sent
  (handshakes, keepalives, staged packets, cookie replies), handed over; ``events``
  (typed: HandshakeCompleted, EndpointChanged, GaveUp) are drained by the node core.

Endpoints are opaque hashable addresses; ``addr_key(addr)`` turns one into
bytes (IP + port) for cookies (whitepaper §5.4.7) and rate limiting.

Sticky sources (the kernel module's and wireguard-go's "sticky sockets"): ``local`` is an
opaque hashable value from the shell naming the local address a datagram arrived on.
``sources`` maps an endpoint to the ``local`` of the latest authenticated packet from it,
so that the shell sends to that endpoint from there, and a peer that wrote to one of our
addresses hears back from that address instead of seeing us roam. An entry goes when the
endpoint changes, when the peer is removed, and when a handshake is retried for want of an
answer (wireguard-go markEndpointSrcForClearing: the source may be the trouble); the shell
asks ``forget_source`` to drop one the kernel refuses; it reads them through ``source_for``
(never the dict itself). ``local=None`` (no report) leaves the choice to the kernel. A source
whose route moved to another interface (``forget_source(..., moved=True)``, daemon/sticky.py) is
not learned again from the packets still in flight to it (the peer writes there until it hears
us from the new source; the kernel module checks the route at every send, socket.c ``send4``,
so it cannot pin the old one again either) until ``routes_changed`` says the routes changed anew.

Names and rules follow wireguard-go's device/ (send.go, receive.go, timers.go,
keypair.go, peer.go); whitepaper sections are cited where a rule comes from.
"""

from __future__ import annotations

import heapq
import itertools
import math
import struct
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wgdisco.errors import AuthError, DecodeError, LocalError
from wgdisco.proto import noise
from wgdisco.proto.allowedips import AllowedIPs
from wgdisco.proto.cookie import CookieChecker, CookieGenerator
from wgdisco.proto.icmp import TooBig, Unreachable
from wgdisco.proto.indextable import IndexTable
from wgdisco.proto.keys import clamp
from wgdisco.proto.multicast import Multicast
from wgdisco.proto.pmtu import BASE_INNER, WG_OVERHEAD
from wgdisco.proto.ratelimiter import RateLimiter, TokenBucket
from wgdisco.proto.replay import ReplayFilter
from wgdisco.proto.timers import LIVE_TIME, QUEUE_STAGED_SIZE, UNDER_LOAD_AFTER_TIME, Timing

LARGE_DATAGRAM = BASE_INNER + WG_OVERHEAD  # a data datagram above this can meet a path MTU limit (proto/pmtu.py)

Addr = Hashable
Rng = Callable[[int], bytes]

_HEADER = struct.Struct("<IIQ")  # type, receiver, counter (whitepaper §5.4.6)
_NONCE_PREFIX = bytes(4)
_PADDING = bytes(16)
MAX_INNER = 65535  # Peer.max_inner without a limit: larger than any IP packet
_NEVER = float("inf")
TRANSPORT_TYPE_WORD = noise.MESSAGE_TRANSPORT_TYPE  # little-endian u32 with 3 zero bytes
HANDSHAKE_LOAD_THRESHOLD = 128  # handshake messages a second that mean "under load"
# Handshake work per second, so that a flood never starves transport data (the data plane is one
# thread): initiations/responses consumed (~120 µs each) and cookie replies made (~90 µs each).
# At most ~0.2 s of CPU a second between them, and ~4 ms in one burst.
HANDSHAKE_BUDGET, HANDSHAKE_BURST = 1000, 20
COOKIE_REPLY_BUDGET, COOKIE_REPLY_BURST = 1000, 20


class Keypair:
    """One session's transport state (whitepaper §5.4.5, wireguard-go keypair.go)."""

    __slots__ = (
        "send", "receive", "send_counter", "replay", "created", "is_initiator",
        "local_index", "remote_index", "peer", "expires", "rekey_at", "send_key", "receive_key",
    )

    def __init__(self, keys: noise.SessionKeys, peer: "Peer", timing: Timing) -> None:
        self.send = ChaCha20Poly1305(keys.send_key)
        self.receive = ChaCha20Poly1305(keys.receive_key)
        self.send_key, self.receive_key = keys.send_key, keys.receive_key  # for a compiled data path
        self.send_counter = 0
        self.replay = ReplayFilter()
        self.created = keys.created
        self.is_initiator = keys.is_initiator
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.peer = peer
        # deadlines precomputed for the per-packet checks (whitepaper §6.1, §6.2)
        self.expires = keys.created + timing.reject_after_time  # RejectAfterTime
        # keepKeyFreshSending: only the initiator rekeys after RekeyAfterTime
        self.rekey_at = keys.created + timing.rekey_after_time if keys.is_initiator else _NEVER


class Peer:
    """A configured peer: handshake, keypairs, endpoint, timers, counters."""

    def __init__(self, device: "Device", public_key: bytes, preshared_key: bytes | None) -> None:
        self.public_key = public_key
        self.handshake = noise.Handshake(device.identity, public_key, preshared_key or bytes(32))
        self.cookie_generator = CookieGenerator(public_key)
        self.endpoint: Addr | None = None
        self.persistent_keepalive = 0  # seconds, 0 = off
        self.max_inner = MAX_INNER  # the largest inner packet its path carries (proto/pmtu.py, set_path_limit)
        # keypairs (whitepaper §5.4.5; responder promotes `next` on first data)
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: list[bytes] = []
        # counters, for wg show
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake: float | None = None  # `now` of the last completed handshake
        self.last_authenticated: float | None = None  # `now` of the last authenticated packet
        self.last_data: float | None = None  # `now` of the last data packet sent, staged or received (not keepalives)
        # timers (whitepaper §6; wireguard-go timers.go): deadlines, None = not pending
        self.t_retransmit: float | None = None
        self.t_send_keepalive: float | None = None
        self.t_new_handshake: float | None = None
        # when data first went unanswered (timersDataSent armed t_new_handshake); None once an
        # authenticated packet came or the new-handshake timer fired (the node's suspicion)
        self.unanswered_since: float | None = None
        self.unanswered_largest = 0  # the largest data datagram sent since then (proto/pmtu.py black holes)
        self.large_received: float | None = None  # `now` of the last data datagram received larger than LARGE_DATAGRAM
        self.t_zero_key: float | None = None
        self.t_persistent: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.last_sent_handshake: float | None = None
        self.armed_at = math.inf  # this peer's entry in the device's timer heap (Device._arm)

    def deadlines(self) -> Iterable[float | None]:
        return (self.t_retransmit, self.t_send_keepalive, self.t_new_handshake, self.t_zero_key, self.t_persistent)

    def __repr__(self) -> str:
        return f"Peer({self.public_key[:4].hex()}…)"


# --- events (drained by the node core, proto/node.py) -------------------------


@dataclass(frozen=True)
class HandshakeCompleted:
    """A handshake with ``peer`` completed (timersHandshakeComplete)."""

    peer: bytes


@dataclass(frozen=True)
class EndpointChanged:
    """``peer``'s endpoint moved from ``old`` to ``new``; ``cause`` names why: "roaming" (an
    authenticated packet from there, whitepaper §2.1), or the caller's cause (config, uapi,
    probe, mdns, dns, …)."""

    peer: bytes
    old: Addr | None
    new: Addr | None
    cause: str


@dataclass(frozen=True)
class GaveUp:
    """No handshake with ``peer`` after ``attempts`` tries (whitepaper §6.4)."""

    peer: bytes
    attempts: int


DeviceEvent = HandshakeCompleted | EndpointChanged | GaveUp


class Device:
    """Cryptokey routing and the WireGuard protocol for one interface."""

    def __init__(
        self,
        private_key: bytes,
        *,
        rng: Rng,
        now: float,
        wall_offset: float = 0.0,
        mtu: int = 1420,
        timing: Timing | None = None,
        addr_key: Callable[[Addr], bytes] = lambda a: repr(a).encode(),
        handshake_load_threshold: int = HANDSHAKE_LOAD_THRESHOLD,
    ) -> None:
        self.rng = rng
        self._jitter_state = int.from_bytes(rng(8), "little") | 1
        self.wall_offset = wall_offset  # wall time = now + wall_offset (TAI64N, §5.4.2)
        self.mtu = mtu
        self.timing = timing or Timing()
        self._reject_messages = self.timing.reject_after_messages  # per-packet checks: one load
        self._rekey_messages = self.timing.rekey_after_messages
        self.addr_key = addr_key
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips = AllowedIPs()
        self.index_table = IndexTable()
        self.rate_limiter = RateLimiter()
        self.handshake_budget = TokenBucket(HANDSHAKE_BUDGET, HANDSHAKE_BURST)
        self.cookie_budget = TokenBucket(COOKIE_REPLY_BUDGET, COOKIE_REPLY_BURST)
        self.outbox: list[tuple[bytes, Addr]] = []
        # peers whose last_authenticated, last_data or unanswered_since changed since pop_touched():
        # the node's cores look at these only, not at every peer (issue 26)
        self.touched: set[Peer] = set()
        # peers whose endpoint, sticky source, keypairs, Python-side send counter or path limit
        # changed since pop_mirrored(): the compiled data path re-reads these only, not every peer
        # at every drain (daemon/fastpath.py sync; issue 26). ``_mirror_all``: a change not tied to
        # one peer (a source forgotten by address): every peer. ``peers_generation`` moves when
        # a peer comes or goes.
        self._mirror: set[Peer] = set()
        self._mirror_all = False
        self.peers_generation = 0
        self.unreachable: Unreachable | None = None  # ICMP answers to unsendable packets (proto/icmp.py)
        self.tun_out: list[bytes] = []  # packets the device itself writes to TUN (those answers)
        self.too_big: TooBig | None = None  # over a peer's path limit: ICMP "too big" or fragments (icmp.py)
        self.multicast: Multicast | None = None  # link-local multicast over the tunnel (proto/multicast.py)
        self.sources: dict[Addr, Hashable] = {}  # endpoint -> local source of its latest authenticated packet
        self._moved: dict[Addr, Hashable] = {}  # endpoint -> a source whose route moved: not learned again
        self.events: list[DeviceEvent] = []
        # (deadline, seq, peer): at most one live entry per peer, the earliest of its timers or
        # earlier (a timer moved later is found when the entry pops); get_timer is its top
        self._timers: list[tuple[float, int, Peer]] = []
        self._timer_seq = itertools.count()
        self.drops: dict[str, int] = {}  # dropped input, by reason
        self.counters: dict[str, int] = {}  # other protocol events (cookie replies, …)
        self.handshake_load_threshold = handshake_load_threshold
        self._load_window = (now, 0)
        self.under_load_until = -1.0
        self.identity: noise.StaticIdentity | None = None  # type: ignore[assignment]
        self.set_private_key(private_key)

    # --- configuration -------------------------------------------------------

    def set_private_key(self, private_key: bytes) -> None:
        private_key = clamp(private_key)
        if self.identity is not None and self.identity.private == private_key:
            return  # unchanged (wg syncconf resends it): keep every session (wireguard-go SetPrivateKey)
        self.identity = noise.StaticIdentity(private_key)
        self.cookie_checker = CookieChecker(self.identity.public)
        for public in [p for p in self.peers if p == self.identity.public]:
            self.remove_peer(public)  # wireguard-go: a peer with our own key is removed
        for peer in self.peers.values():
            peer.handshake.precompute(self.identity)
            self._expire_current_keypairs(peer)

    def add_peer(self, public_key: bytes, preshared_key: bytes | None = None) -> Peer:
        if public_key in self.peers:
            raise LocalError("peer already exists")
        if public_key == self.identity.public:
            raise LocalError("a peer cannot have the interface's own public key")
        peer = Peer(self, public_key, preshared_key)
        self.peers[public_key] = peer
        self.peers_generation += 1
        self._mirror.add(peer)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.peers_generation += 1
        self.allowed_ips.remove_by_peer(peer)
        self._zero_and_flush(peer)
        peer.staged.clear()
        self.unstick(peer)
        self._mirror.discard(peer)  # after the calls above, which mark it: a gone peer is held nowhere
        if self.multicast is not None:
            self.multicast.forget(public_key)

    def set_preshared_key(self, peer: Peer, psk: bytes | None) -> None:
        peer.handshake.preshared_key = psk or bytes(32)

    def set_persistent_keepalive(self, peer: Peer, seconds: int, now: float) -> None:
        was = peer.persistent_keepalive
        peer.persistent_keepalive = seconds
        if seconds and not was and peer.endpoint is not None:
            self.send_keepalive(peer, now)  # wireguard-go uapi.go: start right away

    def set_endpoint(self, peer: Peer, endpoint: Addr | None, cause: str | None = None) -> None:
        """Point ``peer`` at ``endpoint``; with a ``cause`` a change is reported (EndpointChanged)."""
        if peer.endpoint != endpoint:
            if cause is not None:
                self.events.append(EndpointChanged(peer.public_key, peer.endpoint, endpoint, cause))
            self.unstick(peer)  # a new endpoint: the kernel picks the source until the peer answers
        peer.endpoint = endpoint
        self._mirror.add(peer)

    def unstick(self, peer: Peer) -> None:
        """Forget the local source for ``peer``'s endpoint: the kernel chooses until the next
        authenticated packet from it (wireguard-go ClearSrc)."""
        if peer.endpoint is not None:
            self.sources.pop(peer.endpoint, None)
            self._mirror.add(peer)

    def source_for(self, endpoint: Addr) -> Hashable | None:
        """The local source to send to ``endpoint`` from (None: the kernel chooses). The shell's
        read-only view of ``sources`` (io/udp.py ``Sender.source_for``): it never holds the dict."""
        return self.sources.get(endpoint)

    def forget_source(self, endpoint: Addr, source: Hashable, moved: bool = False) -> bool:
        """The shell could not send from ``source`` (the address is gone, the route moved): forget
        it if it is still ``endpoint``'s, so the kernel chooses until the next authenticated
        packet. ``moved``: the route to the endpoint leaves through another interface now, and a
        packet arriving on ``source`` does not make it the source again (until ``routes_changed``).
        True when it was (and is forgotten now)."""
        if self.sources.get(endpoint) is not source:
            return False
        del self.sources[endpoint]
        self._mirror_all = True  # whose endpoint it is: not known here (rare: a send failed, a route moved)
        if moved:
            self._moved[endpoint] = source
        return True

    def routes_changed(self) -> None:
        """The routes changed again (the shell checks the sticky sources anew): a source whose
        route had moved may be learned again (the route may have come back)."""
        self._moved.clear()

    def _learn_source(self, peer: Peer, addr: Addr, local: Hashable) -> None:
        """``local`` (not None) became ``addr``'s (``peer``'s endpoint's) source, unless its route
        moved away (forget_source)."""
        self._mirror.add(peer)
        if self._moved and self._moved.get(addr) == local:
            self.sources.pop(addr, None)
            return
        self.sources[addr] = local
        if self._moved:
            self._moved.pop(addr, None)

    def try_endpoint(self, peer: Peer, endpoint: Addr, now: float, cause: str = "hint") -> None:
        """Point ``peer`` at a hinted candidate and send an initiation there now.

        The REKEY_TIMEOUT gate of §6.1 is skipped: the caller's schedule (proto/hints.py)
        bounds tries to one per interval. Only a completed handshake proves the candidate;
        a response from elsewhere still moves the endpoint by the roaming rule (§2.1).
        """
        self.set_endpoint(peer, endpoint, cause)
        peer.last_sent_handshake = None
        self.send_handshake_initiation(peer, now, is_retry=False)

    def is_live(self, peer: Peer, now: float, within: float = LIVE_TIME) -> bool:
        """An authenticated packet from ``peer`` within ``within`` seconds."""
        return peer.last_authenticated is not None and now - peer.last_authenticated < within

    # --- timers (whitepaper §6; wireguard-go timers.go) ---------------------

    def _jitter(self) -> float:
        """0..REKEY_TIMEOUT_JITTER_MAX (§6.1). Not secret: xorshift64, seeded once from rng,
        because this runs for data packets and rng may be a system call."""
        x = self._jitter_state
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
        self._jitter_state = x
        return x % 1000 / 1000 * self.timing.rekey_timeout_jitter_max

    def get_timer(self) -> float | None:
        """The earliest deadline of any peer (or a little earlier: a deadline that moved later is
        found when its heap entry pops), None if none. O(1), no scan of the peers."""
        return self._timers[0][0] if self._timers else None

    def _arm(self, peer: Peer, when: float) -> None:
        """``when`` is earlier than ``peer``'s entry in the timer heap: a new entry."""
        peer.armed_at = when
        heapq.heappush(self._timers, (when, next(self._timer_seq), peer))

    def handle_timer(self, now: float) -> None:
        """The timers that are due (whitepaper §6; wireguard-go timers.go), peer by peer from the heap."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _seq, peer = heapq.heappop(timers)
            if peer.armed_at != when or self.peers.get(peer.public_key) is not peer:
                continue  # superseded by an earlier entry, or the peer is gone
            peer.armed_at = math.inf
            self._peer_timers(peer, now)
            due = [t for t in peer.deadlines() if t is not None]
            if due and min(due) < peer.armed_at:
                self._arm(peer, min(due))

    def _peer_timers(self, peer: Peer, now: float) -> None:
        # first: after a jump of the clock (a suspend, daemon/clock.py) the old keys go before a
        # timer below starts a handshake, which zeroing would otherwise clear mid-flight
        if peer.t_zero_key is not None and peer.t_zero_key <= now:
            peer.t_zero_key = None
            self._zero_and_flush(peer)
        if peer.t_retransmit is not None and peer.t_retransmit <= now:
            peer.t_retransmit = None
            self._expired_retransmit_handshake(peer, now)
        if peer.t_send_keepalive is not None and peer.t_send_keepalive <= now:
            peer.t_send_keepalive = None
            self.send_keepalive(peer, now)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.t_send_keepalive = now + self.timing.keepalive_timeout
                if peer.t_send_keepalive < peer.armed_at:  # an earlier deadline: into the timer heap
                    self._arm(peer, peer.t_send_keepalive)
        if peer.t_new_handshake is not None and peer.t_new_handshake <= now:
            peer.t_new_handshake = peer.unanswered_since = None
            self.touched.add(peer)
            self.unstick(peer)  # wireguard-go expiredNewHandshake: the source may be the trouble
            self.send_handshake_initiation(peer, now, is_retry=False)
        if peer.t_persistent is not None and peer.t_persistent <= now:
            peer.t_persistent = None
            if peer.persistent_keepalive:
                self.send_keepalive(peer, now)

    def _expired_retransmit_handshake(self, peer: Peer, now: float) -> None:
        if peer.handshake_attempts > self.timing.max_timer_handshakes:
            # whitepaper §6.4: give up after REKEY_ATTEMPT_TIME
            peer.t_send_keepalive = None
            peer.staged.clear()
            if peer.t_zero_key is None:
                peer.t_zero_key = now + 3 * self.timing.reject_after_time
                if peer.t_zero_key < peer.armed_at:  # an earlier deadline: into the timer heap
                    self._arm(peer, peer.t_zero_key)
            self.events.append(GaveUp(peer.public_key, peer.handshake_attempts))
            return
        peer.handshake_attempts += 1
        self.unstick(peer)  # wireguard-go expiredRetransmitHandshake: the source may be the trouble
        self.send_handshake_initiation(peer, now, is_retry=True)

    def _traversal(self, peer: Peer, now: float) -> None:
        """timersAnyAuthenticatedPacketTraversal."""
        if peer.persistent_keepalive:
            peer.t_persistent = now + peer.persistent_keepalive
            if peer.t_persistent < peer.armed_at:  # an earlier deadline: into the timer heap
                self._arm(peer, peer.t_persistent)

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        """timersHandshakeComplete."""
        peer.t_retransmit = None
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.last_handshake = now
        self.events.append(HandshakeCompleted(peer.public_key))

    def _session_derived(self, peer: Peer, now: float) -> None:
        """timersSessionDerived: zero everything after 3 × REJECT_AFTER_TIME (§6.3)."""
        peer.t_zero_key = now + 3 * self.timing.reject_after_time
        if peer.t_zero_key < peer.armed_at:  # an earlier deadline: into the timer heap
            self._arm(peer, peer.t_zero_key)

    # --- handshakes ------------------------------------------------------------

    def send_handshake_initiation(self, peer: Peer, now: float, *, is_retry: bool) -> None:
        if not is_retry:
            peer.handshake_attempts = 0
        if peer.last_sent_handshake is not None and now - peer.last_sent_handshake < self.timing.rekey_timeout:
            return  # whitepaper §6.1: at most one initiation per REKEY_TIMEOUT
        peer.last_sent_handshake = now
        if peer.endpoint is None:
            # nowhere to send it (wireguard-go makes it, then fails "no known endpoint"): the timers
            # run as if it went, so staged packets still go after REKEY_ATTEMPT_TIME (§6.4), but no
            # Diffie-Hellman work and no handshake state: an initiation that never left must not
            # make us yield to the peer's as if ours were on the wire (_yields). 40 members starting:
            # 1,415 such initiations, made for data that came before any path.
            self._count("initiations-no-endpoint")
            self._traversal(peer, now)
            self._retransmit_after(peer, now)
            return
        hs = peer.handshake
        if hs.local_index:
            self.index_table.delete(hs.local_index)
        index = self.index_table.new_index(peer, self.rng)
        try:
            msg = noise.create_initiation(
                self.identity, hs, sender_index=index,
                ephemeral_private=clamp(self.rng(32)), wall=now + self.wall_offset,
            )
        except LocalError:
            self.index_table.delete(index)
            self._drop("peer-key-invalid")
            return
        msg = peer.cookie_generator.add_macs(msg, now=now)
        self._traversal(peer, now)
        peer.t_send_keepalive = None  # timersAnyAuthenticatedPacketSent
        self.outbox.append((msg, peer.endpoint))
        peer.tx_bytes += len(msg)  # wg show transfer counts handshakes too (wireguard-go SendBuffers)
        self._retransmit_after(peer, now)

    def _retransmit_after(self, peer: Peer, now: float) -> None:
        peer.t_retransmit = now + self.timing.rekey_timeout + self._jitter()  # timersHandshakeInitiated
        if peer.t_retransmit < peer.armed_at:  # an earlier deadline: into the timer heap
            self._arm(peer, peer.t_retransmit)

    def _send_handshake_response(self, peer: Peer, now: float) -> None:
        hs = peer.handshake
        if hs.local_index:
            self.index_table.delete(hs.local_index)
        index = self.index_table.new_index(peer, self.rng)
        msg = noise.create_response(self.identity, hs, sender_index=index, ephemeral_private=clamp(self.rng(32)))
        msg = peer.cookie_generator.add_macs(msg, now=now)
        self._begin_session(peer, now)
        peer.last_sent_handshake = now
        self._session_derived(peer, now)
        self._traversal(peer, now)
        peer.t_send_keepalive = None
        if peer.endpoint is not None:
            self.outbox.append((msg, peer.endpoint))
            peer.tx_bytes += len(msg)

    def _begin_session(self, peer: Peer, now: float) -> Keypair:
        """BeginSymmetricSession + keypair rotation (wireguard-go noise-protocol.go)."""
        keys = noise.begin_symmetric_session(peer.handshake, now=now)
        keypair = Keypair(keys, peer, self.timing)
        self._mirror.add(peer)
        self.index_table.swap(keys.local_index, keypair)
        if keys.is_initiator:
            if peer.next is not None:
                self._delete_keypair(peer.current)
                peer.previous, peer.next = peer.next, None
            else:
                self._delete_keypair(peer.previous)
                peer.previous = peer.current
            peer.current = keypair
        else:
            self._delete_keypair(peer.next)
            self._delete_keypair(peer.previous)
            peer.next, peer.previous = keypair, None
        return keypair

    def _delete_keypair(self, keypair: Keypair | None) -> None:
        if keypair is not None:
            self.index_table.delete(keypair.local_index)

    def _expire_current_keypairs(self, peer: Peer) -> None:
        """Force a new handshake before the next data packet (wireguard-go ExpireCurrentKeypairs)."""
        peer.handshake.clear()
        peer.last_sent_handshake = None
        self._mirror.add(peer)
        for kp in (peer.current, peer.next):
            if kp is not None:
                kp.send_counter = self.timing.reject_after_messages

    def _zero_and_flush(self, peer: Peer) -> None:
        """ZeroAndFlushAll: forget every key of this peer (whitepaper §6.3)."""
        for kp in (peer.previous, peer.current, peer.next):
            self._delete_keypair(kp)
        peer.previous = peer.current = peer.next = None
        self._mirror.add(peer)
        if peer.handshake.local_index:
            self.index_table.delete(peer.handshake.local_index)
        peer.handshake.clear()

    # --- send path (wireguard-go send.go) ---------------------------------------

    def send_packet(self, packet: bytes, now: float) -> tuple[bytes, Addr] | None:
        """Encrypt an IP packet from TUN for the peer its destination routes to (§2).

        Two frames for the common case (this one and _encrypt), and the per-packet checks
        read deadlines precomputed on the keypair: at a low packet rate the caches are cold,
        and each call and attribute chain costs latency (docs/performance.md, "The latency floor").
        """
        n = len(packet)
        version = packet[0] >> 4 if n else 0
        if version == 4 and n >= 20:
            peer = self.allowed_ips.lookup(packet[16:20])
        elif version == 6 and n >= 40:
            peer = self.allowed_ips.lookup(packet[24:40])
        else:
            self._drop("tun-not-ip")
            return None
        if peer is None:
            if self.multicast is not None and (admitted := self.multicast.admit_send(packet, now)) is not None:
                if admitted:
                    self._fan_out(packet, now)
                return None
            self._drop("no-route")
            if self.unreachable is not None:
                self._answer_unreachable(packet, now)
            return None
        kp = peer.current
        if kp is None or peer.endpoint is None or kp.send_counter >= self._reject_messages or now >= kp.expires:
            if peer.endpoint is None and self.unreachable is not None and self.unreachable.no_endpoint:
                self._drop("no-endpoint")  # the kernel's -EDESTADDRREQ: answered, not staged
                self._answer_unreachable(packet, now)
                return None
            self._stage(peer, packet)
            peer.last_data = now
            self.touched.add(peer)
            self.send_handshake_initiation(peer, now, is_retry=False)
            return None
        if n > peer.max_inner and self.too_big is not None:
            return self._over_limit(peer, kp, packet, now)
        return self._encrypt(peer, kp, packet, now)

    def _over_limit(self, peer: Peer, kp: Keypair, packet: bytes, now: float) -> None:
        """A packet larger than the peer's discovered path carries (issue 25, proto/icmp.py TooBig):
        "too big" back into TUN (dropped), or an IPv4 packet without DF sent in fragments."""
        assert self.too_big is not None
        pieces, message = self.too_big.handle(packet, peer.max_inner, now)
        if message is not None:
            self.tun_out.append(message)
        if not pieces:
            self._drop("too-big")
            return None
        for piece in pieces:
            self.outbox.append(self._encrypt(peer, kp, piece, now))
        return None

    def set_path_limit(self, peer: Peer, inner: int | None) -> None:
        """The largest inner packet ``peer``'s path carries (None: no limit); proto/pmtu.py finds it."""
        peer.max_inner = MAX_INNER if inner is None else inner
        self._mirror.add(peer)

    def _fan_out(self, packet: bytes, now: float) -> None:
        """One copy of a multicast packet to every eligible peer (proto/multicast.py). A peer with an
        endpoint but no session gets it as a unicast packet would: staged, and a handshake starts
        (at most one per REKEY_TIMEOUT, whitepaper §6.1). Idle peers have no session (issue 26:
        nothing keeps one), and mDNS over the tunnel must still reach them."""
        mc = self.multicast
        assert mc is not None
        sent = 0
        for peer in list(self.peers.values()):
            if not mc.eligible(peer.public_key):
                continue
            kp = self.fast_sendable(peer, now)
            if kp is not None:
                self.outbox.append(self._encrypt(peer, kp, packet, now))
                sent += 1
            elif peer.endpoint is not None:
                self._stage(peer, packet)
                self.send_handshake_initiation(peer, now, is_retry=False)
                sent += 1
        mc.sent(sent)

    def multicast_received(self, peer: Peer, packet: bytes, now: float) -> bytes | None:
        """A packet from ``peer`` to a multicast group that passed the checks of cryptokey routing:
        the packet for TUN, or None. Without multicast over the tunnel it is delivered as any packet
        (as the kernel module does); with it, only within the rules of proto/multicast.py."""
        mc = self.multicast
        if mc is None or mc.admit_received(peer.public_key, packet, now):
            return packet
        return None

    def _answer_unreachable(self, packet: bytes, now: float) -> None:
        """ICMP host / address unreachable back into TUN (wireguard-linux device.c wg_xmit)."""
        assert self.unreachable is not None
        message = self.unreachable.reply(packet, now)
        if message is not None:
            self.tun_out.append(message)

    def _stage(self, peer: Peer, packet: bytes) -> None:
        if len(peer.staged) >= QUEUE_STAGED_SIZE:
            del peer.staged[0]
            self._drop("staged-overflow")
        peer.staged.append(bytes(packet))

    def _encrypt(self, peer: Peer, kp: Keypair, packet: bytes, now: float) -> tuple[bytes, Addr]:
        """One transport message (whitepaper §5.4.6) with a checked keypair, and the send timers."""
        counter = kp.send_counter
        kp.send_counter = counter + 1
        self._mirror.add(peer)  # the compiled path's copy of the counter is behind now
        n = len(packet)
        # whitepaper §5.4.6: pad to a multiple of 16, not beyond the MTU
        if n & 15 and n < self.mtu:
            packet = bytes(packet) + _PADDING[: min((n + 15) & ~15, self.mtu) - n]
        header = _HEADER.pack(TRANSPORT_TYPE_WORD, kp.remote_index, counter)
        datagram = header + kp.send.encrypt(_NONCE_PREFIX + header[8:16], packet, None)
        self.transport_sent(peer, kp, now, len(datagram), 1 if n else 0)
        return datagram, peer.endpoint  # type: ignore[return-value]

    def send_keepalive(self, peer: Peer, now: float) -> None:
        """An empty transport packet, or the staged packets if any (wireguard-go SendKeepalive)."""
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)

    def _send_staged(self, peer: Peer, now: float) -> None:
        while peer.staged:
            kp = peer.current
            if (
                kp is None
                or peer.endpoint is None
                or kp.send_counter >= self._reject_messages
                or now >= kp.expires
            ):
                self.send_handshake_initiation(peer, now, is_retry=False)
                return
            packet = peer.staged.pop(0)
            self.outbox.append(self._encrypt(peer, kp, packet, now))

    # --- receive path (wireguard-go receive.go) -----------------------------------

    def receive_datagram(
        self, data: bytes | memoryview, addr: Addr, now: float, local: Hashable = None
    ) -> bytes | None:
        """Handle one WireGuard datagram (bytes or a memoryview of a GRO run) from ``addr``
        that arrived on ``local`` (the shell's opaque name for a local address, or None).

        Returns the inner IP packet for TUN, or None.
        """
        n = len(data)
        if n < 4 or data[1] or data[2] or data[3]:
            self._drop("malformed")
            return None
        kind = data[0]
        if kind == 4:
            if n < noise.MESSAGE_TRANSPORT_SIZE:
                self._drop("malformed")
                return None
            return self._receive_transport(data, addr, now, local)
        data = bytes(data)  # handshake messages are rare: plain bytes for the parsers
        try:
            if kind == 1 and n == noise.MESSAGE_INITIATION_SIZE:
                self._receive_handshake(data, addr, now, self._consume_initiation, local)
            elif kind == 2 and n == noise.MESSAGE_RESPONSE_SIZE:
                self._receive_handshake(data, addr, now, self._consume_response, local)
            elif kind == 3 and n == noise.MESSAGE_COOKIE_REPLY_SIZE:
                self._consume_cookie_reply(data, now)
            else:
                self._drop("malformed")
        except DecodeError:
            self._drop("malformed")
        except AuthError:
            self._drop("handshake-auth")
        return None

    def is_loaded(self, now: float) -> bool:
        """Under load right now (for status), without counting a message as is_under_load does."""
        return now < self.under_load_until

    def is_under_load(self, now: float) -> bool:
        start, count = self._load_window
        if now - start >= 1.0:
            self._load_window = (now, 1)
        else:
            count += 1
            self._load_window = (start, count)
            if count >= self.handshake_load_threshold:
                self.under_load_until = now + UNDER_LOAD_AFTER_TIME
        return now < self.under_load_until

    def _receive_handshake(
        self, data: bytes, addr: Addr, now: float, consume: Callable[..., None], local: Hashable
    ) -> None:
        """mac1, then under load mac2 + rate limit, then the handshake (whitepaper §5.3)."""
        if not self.cookie_checker.check_mac1(data):
            self._drop("mac1")
            return
        if self.is_under_load(now):
            source = self.addr_key(addr)
            if not self.cookie_checker.check_mac2(data, source, now=now):
                if not self.cookie_budget.take(now):  # a reply costs ~90 µs: a flood gets few
                    self._drop("cookie-reply-limited")
                    return
                sender = int.from_bytes(data[4:8], "little")
                reply = self.cookie_checker.create_reply(data, sender, source, now=now, rng=self.rng)
                self.outbox.append((reply, addr))
                self._count("cookie-replies-sent")
                return
            if not self.rate_limiter.allow(source[:-2], now):
                self._drop("rate-limited")
                return
        if not self.handshake_budget.take(now):
            # Transport data is never queued behind handshake work: the Diffie-Hellman work of
            # handshakes (~120 µs each) gets a budget per second, as wireguard-go's bounded
            # handshake queue drops what it cannot take (device/receive.go, QueueHandshakeSize).
            self._drop("handshake-over-budget")
            return
        consume(data, addr, now, local)

    def _consume_initiation(self, data: bytes, addr: Addr, now: float, local: Hashable) -> None:
        crossed: list[Peer] = []

        def lookup(public: bytes) -> noise.Handshake | None:
            p = self.peers.get(public)
            if p is not None and self._yields(p, now):
                crossed.append(p)
                return None  # left alone: our own initiation stands
            return p.handshake if p is not None else None

        try:
            hs = noise.consume_initiation(self.identity, data, lookup, now=now)
        except AuthError:
            if crossed:
                self._count("initiations-crossed")
                return
            raise
        peer = self.peers[hs.remote_static]
        peer.rx_bytes += len(data)  # as wireguard-go's receive.go: handshake messages count too
        self._set_endpoint_from_packet(peer, addr, local)
        self._authenticated(peer, now)
        self._send_handshake_response(peer, now)

    def _yields(self, peer: Peer, now: float) -> bool:
        """Leave ``peer``'s initiation unconsumed: ours to it went out less than REKEY_TIMEOUT / 2
        ago, is still unanswered, and our key is the lower. When both sides initiate at once, each
        consumes the other's initiation, which overwrites its own handshake state, so each drops
        the response to its own and both wait for the retransmission (REKEY_TIMEOUT, 5 s;
        wireguard-go and the kernel module alike). With this rule the lower key's initiation is
        the one both complete: the higher side (wgdisco or not) consumes it as usual, and the
        higher side's initiation is lost here, as on a lossy link. One older than the window is
        taken to be lost, and the peer's is consumed. (40 members on 2 cores: the last pairs of
        the mesh waited 5-13 s for this.) The window is half of REKEY_TIMEOUT, not less: a busy
        host reads a datagram seconds after it came (40 members starting on 2 cores: the other
        side's initiation came 1-3 s after ours in 11 of 74 crossings with a 1 s window, and each
        cost both 5 s); the other half of each retransmission cycle still consumes the peer's
        initiation when ours was lost."""
        return (peer.handshake.state is noise.HandshakeState.INITIATION_CREATED
                and peer.last_sent_handshake is not None
                and now - peer.last_sent_handshake < self.timing.rekey_timeout / 2
                and self.identity.public < peer.public_key)

    def _consume_response(self, data: bytes, addr: Addr, now: float, local: Hashable) -> None:
        def lookup(index: int) -> noise.Handshake | None:
            entry = self.index_table.lookup(index)
            return entry.handshake if isinstance(entry, Peer) else None

        hs = noise.consume_response(self.identity, data, lookup)
        peer = self.peers[hs.remote_static]
        peer.rx_bytes += len(data)
        self._set_endpoint_from_packet(peer, addr, local)
        self._authenticated(peer, now)
        self._begin_session(peer, now)
        self._session_derived(peer, now)
        self._handshake_complete(peer, now)
        self.send_keepalive(peer, now)

    def _consume_cookie_reply(self, data: bytes, now: float) -> None:
        entry = self.index_table.lookup(int.from_bytes(data[4:8], "little"))
        peer = entry.peer if isinstance(entry, Keypair) else entry
        if not isinstance(peer, Peer):
            self._drop("cookie-unknown-index")
            return
        peer.cookie_generator.consume_reply(data, now=now)
        self._count("cookie-replies-received")

    def _authenticated(self, peer: Peer, now: float) -> None:
        """timersAnyAuthenticatedPacketTraversal + timersAnyAuthenticatedPacketReceived."""
        peer.last_authenticated = now
        self.touched.add(peer)
        self._traversal(peer, now)
        peer.t_new_handshake = peer.unanswered_since = None  # timersAnyAuthenticatedPacketReceived

    def _set_endpoint_from_packet(self, peer: Peer, addr: Addr, local: Hashable) -> None:
        """Roaming (whitepaper §2.1): the endpoint follows the latest authenticated packet,
        and our source for it is the local address that packet arrived on."""
        self._mirror.add(peer)
        if peer.endpoint != addr:
            self.events.append(EndpointChanged(peer.public_key, peer.endpoint, addr, "roaming"))
            self.unstick(peer)
            peer.endpoint = addr
        if local is None:
            self.sources.pop(addr, None)
        else:
            self._learn_source(peer, addr, local)

    def _receive_transport(self, data: bytes, addr: Addr, now: float, local: Hashable) -> bytes | None:
        """Decrypt, replay-check, then the inner packet's length and source (whitepaper §5.4.6, §2).

        One frame for the common case: see send_packet on cold caches.
        """
        _type, receiver, counter = _HEADER.unpack_from(data)
        kp = self.index_table.lookup(receiver)
        if kp.__class__ is not Keypair:
            self._drop("unknown-index")
            return None
        if now >= kp.expires:
            self._drop("expired-keypair")
            return None
        try:
            plaintext = kp.receive.decrypt(_NONCE_PREFIX + data[8:16], data[16:], None)
        except InvalidTag:
            self._drop("data-auth")
            return None
        if not kp.replay.validate_counter(counter, self._reject_messages):
            self._drop("replay")
            return None
        peer = kp.peer
        if kp is peer.next:  # ReceivedWithKeypair: the responder's first data (§5.4.5)
            self._delete_keypair(peer.previous)
            peer.previous, peer.current, peer.next = peer.current, kp, None
            self._mirror.add(peer)
            self._handshake_complete(peer, now)
            self._send_staged(peer, now)
        timing = self.timing
        self._keep_key_fresh_receiving(peer, now)
        if peer.endpoint != addr:
            self._set_endpoint_from_packet(peer, addr, local)
        elif local is not None and self.sources.get(addr) != local:
            self._learn_source(peer, addr, local)  # the peer wrote to another of our addresses (or again after an unstick)
        peer.last_authenticated = now
        self.touched.add(peer)
        if peer.persistent_keepalive:
            peer.t_persistent = now + peer.persistent_keepalive
            if peer.t_persistent < peer.armed_at:  # an earlier deadline: into the timer heap
                self._arm(peer, peer.t_persistent)
        peer.t_new_handshake = peer.unanswered_since = None  # timersAnyAuthenticatedPacketReceived
        peer.rx_bytes += len(data)
        n = len(plaintext)
        if not n:
            return None  # a keepalive
        peer.last_data = now
        if len(data) > LARGE_DATAGRAM:
            peer.large_received = now
        # timersDataReceived
        if peer.t_send_keepalive is None:
            peer.t_send_keepalive = now + timing.keepalive_timeout
            if peer.t_send_keepalive < peer.armed_at:  # an earlier deadline: into the timer heap
                self._arm(peer, peer.t_send_keepalive)
        else:
            peer.need_another_keepalive = True
        # The length comes from the IP header; the source must be in the peer's AllowedIPs (§2).
        version = plaintext[0] >> 4
        if version == 4 and n >= 20:
            length = plaintext[2] << 8 | plaintext[3]
            source = plaintext[12:16]
        elif version == 6 and n >= 40:
            length = (plaintext[4] << 8 | plaintext[5]) + 40
            source = plaintext[8:24]
        else:
            self._drop("inner-not-ip")
            return None
        if length > n or length < 20:
            self._drop("inner-length")
            return None
        if self.allowed_ips.lookup(source) is not peer:
            self._drop("inner-source-not-allowed")
            return None
        if (plaintext[16] & 0xF0 == 0xE0) if version == 4 else (plaintext[24] == 0xFF):  # multicast
            return self.multicast_received(peer, plaintext[:length], now)
        return plaintext[:length] if length < n else plaintext

    # --- a compiled data path (daemon/fastpath.py, io/_fastpath.c) -------------------
    # It sends and receives transport data for keypairs handed to it and reports what it did
    # per peer and batch; these hooks do what _encrypt and _receive_transport do per packet
    # beyond the cryptography (counters, timers, roaming, rekeying), once per batch at `now`.

    def fast_sendable(self, peer: Peer, now: float) -> Keypair | None:
        """The keypair a compiled path may send data to ``peer`` with (send_packet's checks), or None."""
        kp = peer.current
        if kp is None or peer.endpoint is None or kp.send_counter >= self._reject_messages or now >= kp.expires:
            return None
        return kp

    def _keep_key_fresh_receiving(self, peer: Peer, now: float) -> None:
        """keepKeyFreshReceiving (whitepaper §6.2): the initiator of a session about to be rejected
        starts a new handshake once, on receiving."""
        current, timing = peer.current, self.timing
        if (
            current is not None
            and current.is_initiator
            and not peer.sent_last_minute_handshake
            and now - current.created >= timing.reject_after_time - timing.keepalive_timeout - timing.rekey_timeout
        ):
            peer.sent_last_minute_handshake = True
            self.send_handshake_initiation(peer, now, is_retry=False)

    def transport_sent(self, peer: Peer, kp: Keypair | None, now: float, nbytes: int, data_packets: int,
                       largest: int | None = None) -> None:
        """``data_packets`` data messages (``nbytes`` on the wire, the largest ``largest`` bytes; None:
        not known, taken as ``nbytes``) went to ``peer`` with ``kp``, whose ``send_counter`` is up to
        date: _encrypt's timers and keepKeyFreshSending (§6.2)."""
        peer.tx_bytes += nbytes
        if peer.persistent_keepalive:
            peer.t_persistent = now + peer.persistent_keepalive
            if peer.t_persistent < peer.armed_at:  # an earlier deadline: into the timer heap
                self._arm(peer, peer.t_persistent)
        peer.t_send_keepalive = None  # timersAnyAuthenticatedPacketSent
        if data_packets:
            peer.last_data = now
            self.touched.add(peer)
        if data_packets and peer.t_new_handshake is None:  # timersDataSent
            peer.t_new_handshake = now + self.timing.keepalive_timeout + self.timing.rekey_timeout + self._jitter()
            if peer.t_new_handshake < peer.armed_at:  # an earlier deadline: into the timer heap
                self._arm(peer, peer.t_new_handshake)
            peer.unanswered_since = now
            peer.unanswered_largest = 0
        if data_packets and peer.unanswered_since is not None:
            size = nbytes if largest is None else largest
            if size > peer.unanswered_largest:
                peer.unanswered_largest = size
        # keepKeyFreshSending (whitepaper §6.2)
        if kp is not None and (kp.send_counter - 1 > self._rekey_messages or now > kp.rekey_at):
            self.send_handshake_initiation(peer, now, is_retry=False)

    def transport_received(
        self, peer: Peer, now: float, nbytes: int, data_packets: int,
        endpoint: Addr | None = None, local: Hashable = None, largest: int | None = None,
    ) -> None:
        """Authenticated transport messages from ``peer`` (``nbytes``, of which ``data_packets`` were
        not keepalives, the largest data message ``largest`` bytes; None: taken as ``nbytes``);
        ``endpoint``/``local``: where the latest came from and arrived on, when that changed
        (roaming, §2.1). _receive_transport's bookkeeping after the checks."""
        timing = self.timing
        self._keep_key_fresh_receiving(peer, now)
        if endpoint is not None:
            if peer.endpoint != endpoint:
                self._set_endpoint_from_packet(peer, endpoint, local)
            elif local is not None and self.sources.get(endpoint) != local:
                self._learn_source(peer, endpoint, local)
        peer.last_authenticated = now
        self.touched.add(peer)
        if peer.persistent_keepalive:
            peer.t_persistent = now + peer.persistent_keepalive
            if peer.t_persistent < peer.armed_at:  # an earlier deadline: into the timer heap
                self._arm(peer, peer.t_persistent)
        peer.t_new_handshake = peer.unanswered_since = None  # timersAnyAuthenticatedPacketReceived
        peer.rx_bytes += nbytes
        if data_packets and (nbytes if largest is None else largest) > LARGE_DATAGRAM:
            peer.large_received = now
        if data_packets:  # timersDataReceived, once per data packet
            peer.last_data = now
            if peer.t_send_keepalive is None:
                peer.t_send_keepalive = now + timing.keepalive_timeout
                if peer.t_send_keepalive < peer.armed_at:  # an earlier deadline: into the timer heap
                    self._arm(peer, peer.t_send_keepalive)
                if data_packets > 1:
                    peer.need_another_keepalive = True
            else:
                peer.need_another_keepalive = True

    def count_drops(self, drops: dict[str, int]) -> None:
        """Drops a compiled data path counted, by the reasons this device uses."""
        for reason, n in drops.items():
            self.drops[reason] = self.drops.get(reason, 0) + n

    # --- counters ---------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self.outbox = self.outbox, []
        return out

    def pop_mirrored(self) -> set[Peer] | None:
        """The peers whose state a compiled data path mirrors may have changed since the last
        call (None: any peer may have); cleared."""
        out: set[Peer] | None = None if self._mirror_all else self._mirror
        self._mirror, self._mirror_all = set(), False
        return out

    def pop_touched(self) -> set[Peer]:
        """The peers whose last_authenticated, last_data or unanswered_since changed since the
        last call (removed peers included: check ``peers``)."""
        out, self.touched = self.touched, set()
        return out
