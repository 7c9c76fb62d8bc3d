"""Authenticated path probes: wgdisco's own messages on the tunnel's one UDP socket (pure).

Theory of operation
-------------------
A probe tells whether a candidate endpoint reaches a configured peer, how long the round trip
takes, and which source address the peer saw (its answer carries it, like STUN's
XOR-MAPPED-ADDRESS, RFC 5389 §15.2: that is how peer-reflexive candidates are learnt).
Records are hints (ARCHITECTURE.md, "Trust model"); a probe answer is proof, because both
messages carry a MAC keyed from the two peers' static keys.

    requester                                      responder
    request(peer, addr, now) ── 0xF1 request ──►   receive() -> reply, ProbeRequested
    receive() -> ProbeResult  ◄── 0xF2 response ──

Keys. Both sides compute the same DH(own_private, peer_public) (whitepaper §5.4: DH) and
expand it with HKDF (RFC 5869; crypto.KDF2), salt = HASH(label || lower pub || higher pub):
τ1 keys the messages sent by the lower public key, τ2 those sent by the higher one, so a
message cannot be reflected back to its sender. Keys are derived once per peer (add_peer).

Messages (integers big-endian; the MAC is keyed BLAKE2s-128, whitepaper §5.4: Mac):

    request  0xF1                                 response  0xF2
    off len  field                                off len  field
      0   1  type 0xF1                              0   1  type 0xF2
      1   2  magic "wd"                             1   2  magic "wd"
      3   1  version 1                              3   1  version 1
      4   8  sender hint = HASH(HINT_LABEL||pub)    4   8  responder's hint
     12   8  counter (per-sender, increasing)      12   8  the request's counter, echoed
     20   8  id (random)                           20   8  the request's id, echoed
     28   n  zero padding (size >= 64)             28   1  L = length of the address
    -16  16  MAC(send key, all bytes before)       29   L  observed address XOR (id||counter)
                                                 29+L 16  MAC(send key, all bytes before)

Byte 0 has its top two bits set (never STUN, RFC 5389 §6) and is not 1..4 (never WireGuard,
whitepaper §5.4); classify.py routes it here. The address is XORed (RFC 5389 §15.2) so that
NAT ALGs do not rewrite it; the MAC would catch them, but the probe would be lost.

Rules
- No amplification: a response is never larger than its request. Requests are at least
  MIN_REQUEST_SIZE = 64 bytes, which fits an IPv6 response (28 + 1 + 19 + 16 = 64); a response
  that would be larger is not sent. Requests may be padded (up to MAX_PROBE_SIZE) to test the MTU.
- Replay: the counter starts at int(wall × 2^20) (Unix time at construction: a restarted sender
  starts above its old counters, as the TAI64N timestamp does for handshakes, whitepaper §5.4.2)
  and goes up by one per request; the responder keeps a ReplayFilter (RFC 6479) per peer.
- A response is accepted once, only for an outstanding request id, from the peer and address
  the request went to (a symmetric check, RFC 8445 §7.2.5.2.1). A request that timed out
  (reported as ProbeTimeout) still takes its answer for LATE_WINDOW seconds: a responder starved
  of CPU answers late, and the late answer proves the path as well as a prompt one (100 members
  converging on 2 cores dropped 158,063 answers that came after the 3 s timeout, and each lost
  answer meant more punching). At most MAX_OUTSTANDING such ids are kept, oldest out first.
- Rate limit: at most `per_second` answers a second per peer (token bucket, after the MAC so a
  forger cannot spend a peer's tokens). Unknown senders and bad MACs get nothing.
- Malformed or unauthenticated input is counted in `drops` and never raises.
- The hint only names a public key, which the node's records publish anyway (TXT "pub=").

Addresses are opaque to the core except for the observed address a responder encodes: the
constructor takes `addr_to_bytes` / `addr_from_bytes` (they may raise WgdiscoError or
ValueError). The defaults, `encode_address` / `decode_address`, take the socket's
``(host, port[, flowinfo, scope])`` tuples and give back ``(host, port)`` with IPv4-mapped
IPv6 shown as IPv4 (the requester turns it into its own socket's form).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import struct
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from wgdisco.errors import AuthError, DecodeError, LocalError, WgdiscoError
from wgdisco.proto.crypto import DH, HASH, KDF2, KEY_LEN, MAC, MAC_LEN, is_low_order
from wgdisco.proto.keys import public_key
from wgdisco.proto.ratelimiter import RateLimiter
from wgdisco.proto.replay import ReplayFilter

__all__ = [
    "REQUEST_TYPE", "RESPONSE_TYPE", "MAGIC", "VERSION", "HEADER_SIZE", "MIN_REQUEST_SIZE",
    "MIN_RESPONSE_SIZE", "MAX_PROBE_SIZE", "PROBE_TIMEOUT", "LATE_WINDOW", "REPLIES_PER_SECOND", "REPLY_BURST",
    "ProbeKeys", "PeerKeys", "Prober", "ProbeResult", "ProbeRequested", "ProbeTimeout",
    "Received", "key_hint", "encode_address", "decode_address",
]

REQUEST_TYPE = 0xF1
RESPONSE_TYPE = 0xF2
MAGIC = b"wd"
VERSION = 1

KEY_LABEL = b"wgdisco probe v1"
HINT_LABEL = b"wgdisco probe hint v1"
HINT_LEN = 8
ID_LEN = 8

_HEADER = struct.Struct(">B2sB8sQ8s")  # type, magic, version, hint, counter, id
HEADER_SIZE = _HEADER.size  # 28
MIN_REQUEST_SIZE = 64  # fits a response with an IPv6 address: 28 + 1 + 19 + 16
MIN_RESPONSE_SIZE = HEADER_SIZE + 1 + MAC_LEN
MAX_PROBE_SIZE = 65507  # the largest UDP payload over IPv4 (RFC 768, 65535 - 8 - 20)
MAX_ADDRESS_LEN = 32

PROBE_TIMEOUT = 3.0  # seconds until an unanswered request is reported as a timeout
REPLIES_PER_SECOND = 10  # answers a second per peer (hole punching sends bursts)
REPLY_BURST = 20
MAX_OUTSTANDING = 4096  # unanswered requests remembered; the oldest are given up first
LATE_WINDOW = 30.0  # a timed-out request still takes its answer this much longer (as many kept again)

COUNTER_SCALE = 1 << 20  # counter start = int(wall × 2^20)
_COUNTER_LIMIT = 1 << 64

_FAMILY_IPV4 = 0x01  # as STUN's address families, RFC 5389 §15.1
_FAMILY_IPV6 = 0x02
_MAX_ID_DRAWS = 16

Addr = Hashable


# ------------------------------------------------------------------------ keys


def key_hint(public: bytes) -> bytes:
    """The 8-byte sender hint of a public key: HASH(HINT_LABEL || public)[:8]."""
    if len(public) != KEY_LEN:
        raise LocalError(f"a public key is {KEY_LEN} bytes, got {len(public)}")
    return HASH(HINT_LABEL, public)[:HINT_LEN]


class PeerKeys(NamedTuple):
    send: bytes  # MAC key of the messages we send to this peer
    recv: bytes  # MAC key of the messages this peer sends to us
    hint: bytes  # the peer's sender hint


class ProbeKeys:
    """Our identity for probes; `for_peer` derives the pairwise keys (same on both sides)."""

    __slots__ = ("private", "public", "hint")

    def __init__(self, own_private: bytes, own_public: bytes) -> None:
        if len(own_private) != KEY_LEN or public_key(own_private) != own_public:
            raise LocalError("own_public is not the public key of own_private")
        self.private = own_private
        self.public = own_public
        self.hint = key_hint(own_public)

    def for_peer(self, peer_public: bytes) -> PeerKeys:
        """τ1, τ2 = KDF2(HASH(KEY_LABEL || lo || hi), DH(own, peer)) (RFC 5869 salt = the label
        and the sorted public keys); τ1 keys messages sent by `lo`, τ2 those sent by `hi`.

        LocalError for our own key or a key whose DH is zero (a low-order point, RFC 7748 §6.1).
        """
        if len(peer_public) != KEY_LEN:
            raise LocalError(f"a public key is {KEY_LEN} bytes, got {len(peer_public)}")
        if peer_public == self.public:
            raise LocalError("a node cannot probe itself")
        try:
            shared = DH(self.private, peer_public)
        except AuthError:
            raise LocalError("peer public key gives a zero shared secret (low-order point)") from None
        lo, hi = sorted((self.public, peer_public))
        k_lo, k_hi = KDF2(HASH(KEY_LABEL, lo, hi), shared)
        send, recv = (k_lo, k_hi) if self.public == lo else (k_hi, k_lo)
        return PeerKeys(send, recv, key_hint(peer_public))


# ------------------------------------------------------------------- addresses


def encode_address(addr: Any) -> bytes:
    """family (1) || port (2) || IP (4 or 16) of a ``(host, port, ...)`` socket address.

    IPv4-mapped IPv6 (RFC 4291 §2.5.5.2) is encoded as IPv4; a zone index is dropped.
    """
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError, KeyError):
        raise LocalError(f"not a (host, port) address: {addr!r}") from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise LocalError(f"port out of range in {addr!r}")
    return _encoded(str(host), port)


@functools.lru_cache(maxsize=4096)  # every probe answer encodes its sender: ~50 µs of ipaddress each
def _encoded(host: str, port: int) -> bytes:
    ip = ipaddress.ip_address(host.partition("%")[0])  # ValueError for a host that is no IP, as before
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return bytes([family]) + port.to_bytes(2, "big") + ip.packed


def decode_address(data: bytes) -> tuple[str, int]:
    """Inverse of encode_address: ``(host, port)``; DecodeError on anything else."""
    if len(data) == 7 and data[0] == _FAMILY_IPV4:
        return str(ipaddress.IPv4Address(data[3:])), int.from_bytes(data[1:3], "big")
    if len(data) == 19 and data[0] == _FAMILY_IPV6:
        return str(ipaddress.IPv6Address(data[3:])), int.from_bytes(data[1:3], "big")
    raise DecodeError(f"not an encoded address ({len(data)} bytes)")


def _xor_address(data: bytes, pad: bytes) -> bytes:
    """XOR with `pad` repeated (RFC 5389 §15.2 XORs with the cookie and transaction id)."""
    n = len(data)
    mask = (pad * (n // len(pad) + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


# ---------------------------------------------------------------------- events


@dataclass(frozen=True)
class ProbeResult:
    """Our request to `addr` was answered: the path works. `observed` is our address as the
    peer saw it (a reflexive candidate of ours); `rtt` in seconds."""

    peer: bytes
    addr: Addr
    rtt: float
    observed: Any
    size: int = MIN_REQUEST_SIZE  # of our request (path MTU probes are larger, proto/pmtu.py)


@dataclass(frozen=True)
class ProbeRequested:
    """An authenticated request from `peer` arrived from `addr` (a peer-reflexive candidate of
    the peer's, RFC 8445 §7.3.1.3); it is reported whether or not it was answered."""

    peer: bytes
    addr: Addr


@dataclass(frozen=True)
class ProbeTimeout:
    """Our request to `addr` got no valid answer within the timeout."""

    peer: bytes
    addr: Addr
    size: int = MIN_REQUEST_SIZE


class Received(NamedTuple):
    """What `Prober.receive` gives back: a reply to send to the datagram's source, an event."""

    reply: bytes | None
    event: ProbeResult | ProbeRequested | None


NOTHING = Received(None, None)


@dataclass
class _Outstanding:
    peer: bytes
    addr: Addr
    sent: float
    counter: int
    size: int = MIN_REQUEST_SIZE


@dataclass
class _Peer:
    keys: PeerKeys
    replay: ReplayFilter


# ---------------------------------------------------------------------- prober


class Prober:
    """Sends, answers and checks probes for the configured peers (sans-I/O).

    `peers`: the public keys to accept probes from (a dict's keys will do); `rng(n) -> bytes`;
    `wall`: Unix time now (seeds the counter, see the module docstring); `now`: monotonic seconds.
    """

    def __init__(
        self,
        identity_private: bytes,
        identity_public: bytes,
        peers: Iterable[bytes] = (),
        *,
        rng: Callable[[int], bytes],
        wall: float,
        per_second: int = REPLIES_PER_SECOND,
        burst: int = REPLY_BURST,
        timeout: float = PROBE_TIMEOUT,
        addr_to_bytes: Callable[[Any], bytes] = encode_address,
        addr_from_bytes: Callable[[bytes], Any] = decode_address,
        max_outstanding: int = MAX_OUTSTANDING,
    ) -> None:
        self.keys = ProbeKeys(identity_private, identity_public)
        self._rng = rng
        self._counter = int(wall * COUNTER_SCALE)
        if not 0 <= self._counter < _COUNTER_LIMIT:
            raise LocalError(f"wall time {wall!r} out of range")
        self._limiter = RateLimiter(per_second, burst)
        self._timeout = timeout
        self._addr_to_bytes = addr_to_bytes
        self._addr_from_bytes = addr_from_bytes
        self._max_outstanding = max_outstanding
        self._peers: dict[bytes, _Peer] = {}
        self._by_hint: dict[bytes, bytes] = {}
        self._muted: set[bytes] = set()  # low-order keys (add_peer)
        self._outstanding: dict[bytes, _Outstanding] = {}  # id -> request, in send order
        self._late: dict[bytes, _Outstanding] = {}  # id -> timed-out request, in expiry order (LATE_WINDOW)
        self.late_answers = 0  # answers accepted after their request timed out
        self._evicted: list[ProbeTimeout] = []
        self._evicted_at = 0.0
        self.drops: dict[str, int] = {}
        self.replies = 0  # responses sent
        for pub in peers:
            self.add_peer(pub)

    # --- peers

    def add_peer(self, pub: bytes) -> None:
        """Accept probes from `pub` (idempotent). LocalError for our own key or a wrong length.

        A low-order point (RFC 7748 §6.1: the shared secret is zero) is accepted but muted: it is
        not in `peers`, so nothing is ever probed or answered. The kernel module and wireguard-go
        accept such a peer too, and send it nothing (its handshakes fail, noise.create_initiation).
        """
        if pub in self._peers or pub in self._muted:
            return
        if len(pub) == KEY_LEN and pub != self.keys.public and is_low_order(pub):
            self._muted.add(pub)
            return
        keys = self.keys.for_peer(pub)
        other = self._by_hint.get(keys.hint)
        if other is not None:  # 2^-64 by chance: refuse rather than mix two peers up
            raise LocalError("two peers share a probe hint")
        self._peers[pub] = _Peer(keys, ReplayFilter())
        self._by_hint[keys.hint] = pub

    def remove_peer(self, pub: bytes) -> None:
        """Forget `pub`, its replay window and its outstanding requests (no timeouts reported)."""
        self._muted.discard(pub)
        peer = self._peers.pop(pub, None)
        if peer is None:
            return
        del self._by_hint[peer.keys.hint]
        for rid in [rid for rid, o in self._outstanding.items() if o.peer == pub]:
            del self._outstanding[rid]
        for rid in [rid for rid, o in self._late.items() if o.peer == pub]:
            del self._late[rid]

    @property
    def peers(self) -> frozenset[bytes]:
        """The peers probes go to and are accepted from (a muted low-order key is not one)."""
        return frozenset(self._peers)

    def has_peer(self, pub: bytes) -> bool:
        """``pub in peers`` without building the set (O(1))."""
        return pub in self._peers

    @property
    def muted(self) -> frozenset[bytes]:
        """Added peers whose key is a low-order point: never probed, never answered."""
        return frozenset(self._muted)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    @property
    def late_kept(self) -> int:
        """Timed-out requests whose answers would still count (LATE_WINDOW)."""
        return len(self._late)

    # --- requester side

    def request(self, peer_pub: bytes, addr: Addr, now: float, *, size: int = MIN_REQUEST_SIZE) -> bytes:
        """A request datagram to send to `addr`; remembered until answered or timed out."""
        peer = self._peers.get(peer_pub)
        if peer is None:
            raise LocalError("probe request for a peer that was not added")
        if not MIN_REQUEST_SIZE <= size <= MAX_PROBE_SIZE:
            raise LocalError(f"probe size {size} outside {MIN_REQUEST_SIZE}..{MAX_PROBE_SIZE}")
        counter = self._counter
        if counter >= _COUNTER_LIMIT:
            raise LocalError("probe counter exhausted")
        self._counter = counter + 1
        rid = self._new_id()
        head = _HEADER.pack(REQUEST_TYPE, MAGIC, VERSION, self.keys.hint, counter, rid)
        body = head + bytes(size - MAC_LEN - HEADER_SIZE)
        if len(self._outstanding) >= self._max_outstanding:
            oldest = next(iter(self._outstanding))
            o = self._outstanding.pop(oldest)
            self._evicted.append(ProbeTimeout(o.peer, o.addr, o.size))
            self._evicted_at = now
        self._outstanding[rid] = _Outstanding(peer_pub, addr, now, counter, size)
        return body + MAC(peer.keys.send, body)

    def _new_id(self) -> bytes:
        for _ in range(_MAX_ID_DRAWS):
            rid = self._rng(ID_LEN)
            if len(rid) != ID_LEN:
                raise LocalError(f"rng({ID_LEN}) returned {len(rid)} bytes")
            if rid not in self._outstanding and rid not in self._late:
                return rid
        raise LocalError(f"rng gave {_MAX_ID_DRAWS} outstanding ids in a row")

    def handle_timer(self, now: float) -> list[ProbeTimeout]:
        """Requests unanswered for `timeout` seconds (and any given up because too many were out)."""
        expired, self._evicted = self._evicted, []
        out, late = self._outstanding, self._late
        while out:
            rid = next(iter(out))
            o = out[rid]
            if now - o.sent < self._timeout:
                break
            del out[rid]
            late[rid] = o  # its answer still counts for LATE_WINDOW
            expired.append(ProbeTimeout(o.peer, o.addr, o.size))
        while late and (len(late) > self._max_outstanding
                        or now - next(iter(late.values())).sent >= self._timeout + LATE_WINDOW):
            del late[next(iter(late))]
        return expired

    def get_timer(self) -> float | None:
        """When `handle_timer` next has something to report, or None."""
        deadline = next(iter(self._outstanding.values())).sent + self._timeout if self._outstanding else None
        if self._evicted:
            return self._evicted_at if deadline is None else min(self._evicted_at, deadline)
        return deadline

    # --- both sides

    def receive(self, data: bytes | memoryview, addr: Addr, now: float) -> Received:
        """Handle a datagram classify() called PROBE. A reply, if any, goes back to `addr`."""
        data = bytes(data)
        if len(data) < HEADER_SIZE + MAC_LEN:
            return self._drop("short")
        kind, magic, version, hint, counter, rid = _HEADER.unpack_from(data)
        if magic != MAGIC:
            return self._drop("bad-magic")
        if version != VERSION:
            return self._drop("bad-version")
        if kind == REQUEST_TYPE:
            return self._receive_request(data, hint, counter, rid, addr, now)
        if kind == RESPONSE_TYPE:
            return self._receive_response(data, hint, counter, rid, addr, now)
        return self._drop("bad-type")

    def _drop(self, reason: str) -> Received:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return NOTHING

    # --- responder side

    def _receive_request(
        self, data: bytes, hint: bytes, counter: int, rid: bytes, addr: Addr, now: float
    ) -> Received:
        if len(data) < MIN_REQUEST_SIZE:
            return self._drop("short")
        pub = self._by_hint.get(hint)
        if pub is None:
            return self._drop("unknown-peer")
        peer = self._peers[pub]
        if not _mac_ok(peer.keys.recv, data):
            return self._drop("bad-mac")
        if not peer.replay.validate_counter(counter, _COUNTER_LIMIT):
            return self._drop("replay")
        event = ProbeRequested(pub, addr)
        if not self._limiter.allow(pub, now):
            self._drop("rate-limited")
            return Received(None, event)
        try:
            observed = self._addr_to_bytes(addr)
        except (WgdiscoError, ValueError):
            self._drop("bad-address")
            return Received(None, event)
        if len(observed) > MAX_ADDRESS_LEN:
            self._drop("bad-address")
            return Received(None, event)
        pad = rid + counter.to_bytes(8, "big")
        body = (
            _HEADER.pack(RESPONSE_TYPE, MAGIC, VERSION, self.keys.hint, counter, rid)
            + bytes([len(observed)])
            + _xor_address(observed, pad)
        )
        if len(body) + MAC_LEN > len(data):  # never amplify
            self._drop("reply-too-large")
            return Received(None, event)
        self.replies += 1
        return Received(body + MAC(peer.keys.send, body), event)

    # --- requester side, the answer

    def _receive_response(
        self, data: bytes, hint: bytes, counter: int, rid: bytes, addr: Addr, now: float
    ) -> Received:
        if len(data) < MIN_RESPONSE_SIZE:
            return self._drop("short")
        o = self._outstanding.get(rid)
        late = o is None
        if o is None:
            o = self._late.get(rid)
            if o is None or now - o.sent >= self._timeout + LATE_WINDOW:
                return self._drop("unexpected-response")
        peer = self._peers.get(o.peer)
        if peer is None or hint != peer.keys.hint:
            return self._drop("wrong-peer")
        if not _mac_ok(peer.keys.recv, data):
            return self._drop("bad-mac")
        if counter != o.counter:
            return self._drop("bad-counter")
        if addr != o.addr:  # RFC 8445 §7.2.5.2.1: the answer must come from where we sent
            return self._drop("addr-mismatch")
        n = data[HEADER_SIZE]
        if HEADER_SIZE + 1 + n + MAC_LEN != len(data):
            return self._drop("bad-length")
        raw = _xor_address(data[HEADER_SIZE + 1 : HEADER_SIZE + 1 + n], rid + counter.to_bytes(8, "big"))
        try:
            observed = self._addr_from_bytes(raw)
        except (WgdiscoError, ValueError):
            return self._drop("bad-address")
        if late:
            del self._late[rid]
            self.late_answers += 1
        else:
            del self._outstanding[rid]
        return Received(None, ProbeResult(o.peer, o.addr, now - o.sent, observed, o.size))


def _mac_ok(key: bytes, data: bytes) -> bool:
    split = len(data) - MAC_LEN
    return hmac.compare_digest(MAC(key, data[:split]), data[split:])
