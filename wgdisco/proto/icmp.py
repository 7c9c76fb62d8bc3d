"""ICMP "destination unreachable" for packets the tunnel cannot send (sans-I/O).

The kernel module answers a packet from its interface that no peer's AllowedIPs match
(``-ENOKEY``), or whose peer has no endpoint (``-EDESTADDRREQ``), with
``icmp_ndo_send(ICMP_DEST_UNREACH, ICMP_HOST_UNREACH)`` or
``icmpv6_ndo_send(ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH)`` (wireguard-linux device.c,
``wg_xmit``), so that a sender fails at once instead of waiting for a timeout. wireguard-go
sends nothing. wgdisco writes the same messages back into its TUN device:

- IPv4: type 3 code 1 (host unreachable, RFC 792), the original header and as much of its data
  as keeps the message within 576 bytes (RFC 1812 §4.3.2.3).
- IPv6: type 1 code 3 (address unreachable, RFC 4443 §3.1), as much of the original as keeps the
  message within the minimum MTU of 1,280 bytes (RFC 4443 §2.4 (c)); its checksum covers the
  pseudo-header (RFC 8200 §8.1).
- Never about an ICMP error, a packet to a multicast or broadcast address, a packet whose source
  is not one host, or a later IPv4 fragment (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7, RFC 4443 §2.4 (e)).
- The source is the unreachable destination itself. The kernel module makes its message inside
  the stack and takes the route back to the sender's source (the sender's own address for a
  local sender), but a packet written into TUN is received: one whose source is a local address
  (the interface's own, say) is a martian and dropped (``fib_validate_source``, unless
  ``accept_local``). The destination is routed through this interface, so even a strict
  ``rp_filter`` lets the message in, and ``ping`` reports ``From <destination> … Destination
  Host Unreachable``.
- Rate-limited by one token bucket, the kernel's global ICMP limit by default
  (``net.ipv4.icmp_msgs_per_sec`` = 1000, ``icmp_msgs_burst`` = 50).

``host_unreachable(packet)`` builds; ``Unreachable.reply(packet, now)`` adds the rate limit. Both
return the bytes to write to TUN, or None.

"Too big" (issue 25, proto/pmtu.py). A packet larger than a peer's discovered path allows is
answered the way a router with a narrower next hop answers it, so that TCP and QUIC adapt per
destination while the interface MTU stays where it is for peers with a full-size path:

- IPv4 with DF: type 3 code 4 "fragmentation needed and DF set" with the next-hop MTU in the
  low 16 bits of the second word (RFC 1191 §4), and the packet is dropped.
- IPv6: type 2 code 0 "packet too big" with the MTU (RFC 4443 §3.2), never below 1280; dropped.
- IPv4 without DF: not an error: it is sent in fragments (RFC 791 §3.2, as a router forwards it,
  RFC 1812 §5.2.6) that each fit; the destination reassembles them.

Their source is the packet's destination, for the reason given above for "unreachable": a
packet written into TUN whose source is one of our own addresses (the tunnel interface's, as
the kernel module's ``icmp_ndo_send`` would use) is a martian and dropped. The kernel takes a
"too big" from any source: TCP matches it by the quoted header (``tcp_v4_err``,
``tcp_v6_err``). One token bucket limits them as above. ``TooBig.handle(packet, limit, now)``.
"""

from __future__ import annotations

import struct

from wgdisco.proto.ratelimiter import TokenBucket

__all__ = [
    "V4_MAX", "V6_MAX", "RATE", "BURST", "checksum", "host_unreachable", "Unreachable",
    "frag_needed", "packet_too_big", "fragment_ipv4", "TooBig",
]

V4_MAX = 576  # RFC 1812 §4.3.2.3
V6_MAX = 1280  # RFC 4443 §2.4 (c)
RATE = 1000.0  # messages a second (net.ipv4.icmp_msgs_per_sec)
BURST = 50  # net.ipv4.icmp_msgs_burst
HOP_LIMIT = 64  # the kernel's default TTL / hop limit

ICMP_DEST_UNREACH, ICMP_HOST_UNREACH = 3, 1
ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH = 1, 3
ICMP_FRAG_NEEDED = 4  # RFC 792 / RFC 1191 §4, with ICMP_DEST_UNREACH
ICMPV6_PKT_TOOBIG = 2  # RFC 4443 §3.2
IPV6_MIN_MTU = 1280
_ICMP4_ERRORS = frozenset({3, 4, 5, 11, 12})  # RFC 792 / RFC 1122 §3.2.2: the error types
_V6_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options (RFC 8200 §4)
_V6_FRAGMENT, _V6_AH, _ICMPV6 = 44, 51, 58
_MAX_EXTENSIONS = 8


def checksum(data: bytes, start: int = 0) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum of the
    16-bit words of ``data`` (an odd byte padded with zero), ``start`` a partial sum to add."""
    if len(data) & 1:
        data += b"\x00"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


_V4_ANY, _V6_ANY = bytes(4), bytes(16)


def _single_host4(ip: bytes) -> bool:
    """Not 0.0.0.0, multicast (224/4), reserved (240/4) or the broadcast (in 240/4): on the raw
    bytes, as ipaddress's is_unspecified/is_multicast/is_reserved (an answer costs no parsing:
    a ping to every member not yet found is answered many times a second)."""
    return ip[0] < 224 and ip != _V4_ANY


def _single_host6(ip: bytes) -> bool:
    """Not :: and not multicast (ff00::/8)."""
    return ip[0] != 0xFF and ip != _V6_ANY


def _ipv4(packet: bytes, source: bytes, code: int = ICMP_HOST_UNREACH, rest: int = 0) -> bytes | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    if struct.unpack_from("!H", packet, 6)[0] & 0x1FFF:
        return None  # a later fragment (RFC 1812 §4.3.2.7)
    src, dst = packet[12:16], packet[16:20]
    if not _single_host4(src) or not _single_host4(dst) or src[0] == 127:
        return None
    if packet[9] == 1 and (len(packet) < ihl + 1 or packet[ihl] in _ICMP4_ERRORS):
        return None  # never an error about an error (RFC 1122 §3.2.2)
    quoted = packet[: V4_MAX - 28]
    body = struct.pack("!BBHI", ICMP_DEST_UNREACH, code, 0, rest) + quoted
    body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
    tos = (packet[1] & 0x1E) | 0xC0  # IPTOS_PREC_INTERNETCONTROL, as icmp_send
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(body), 0, 0, HOP_LIMIT, 1, 0,
                         source, packet[12:16])
    header = header[:10] + checksum(header).to_bytes(2, "big") + header[12:]
    return header + body


def _v6_upper(packet: bytes) -> tuple[int, int] | None:
    """(next header, offset) of the upper layer past the extension headers; None if it cannot
    be told (truncated, too many headers, or an ICMPv6 message in a later fragment)."""
    nxt, off = packet[6], 40
    for _ in range(_MAX_EXTENSIONS):
        if nxt in _V6_EXTENSIONS or nxt == _V6_AH:
            if len(packet) < off + 2:
                return None
            size = (packet[off + 1] + 2) * 4 if nxt == _V6_AH else (packet[off + 1] + 1) * 8
            nxt, off = packet[off], off + size
        elif nxt == _V6_FRAGMENT:
            if len(packet) < off + 8:
                return None
            later = struct.unpack_from("!H", packet, off + 2)[0] & 0xFFF8
            nxt, off = packet[off], off + 8
            if later:
                return None if nxt == _ICMPV6 else (nxt, -1)
        else:
            return nxt, off
    return None


def _ipv6(packet: bytes, source: bytes, kind: tuple[int, int] = (ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH),
          rest: int = 0) -> bytes | None:
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    if not _single_host6(packet[8:24]) or not _single_host6(packet[24:40]):
        return None  # RFC 4443 §2.4 (e)
    upper = _v6_upper(packet)
    if upper is None:
        return None
    nxt, off = upper
    if nxt == _ICMPV6 and off >= 0 and (len(packet) <= off or packet[off] < 128 or packet[off] == 137):
        return None  # an ICMPv6 error or redirect (RFC 4443 §2.4 (e.1), (e.2))
    quoted = packet[: V6_MAX - 48]
    body = struct.pack("!BBHI", *kind, 0, rest) + quoted
    # RFC 8200 §8.1: source, destination, upper-layer length (32 bits), 3 zero bytes, next header
    pseudo = source + packet[8:24] + struct.pack("!I3xB", len(body), _ICMPV6)
    body = body[:2] + checksum(pseudo + body).to_bytes(2, "big") + body[4:]
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), _ICMPV6, HOP_LIMIT, source, packet[8:24])
    return header + body


def host_unreachable(packet: bytes) -> bytes | None:
    """The ICMP or ICMPv6 "unreachable" answering ``packet`` (an IP packet read from TUN), or None
    when none may be sent (see the module docstring)."""
    packet = bytes(packet)
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        return _ipv4(packet, packet[16:20])
    if version == 6 and len(packet) >= 40:
        return _ipv6(packet, packet[24:40])
    return None


class Unreachable:
    """The rate limit, and whether a packet for a peer without an endpoint is answered too
    (the kernel's ``-EDESTADDRREQ``; off where discovery may still find the endpoint, so the
    packet waits for the handshake instead). ``reply(packet, now)`` is the one call."""

    __slots__ = ("no_endpoint", "_bucket", "sent", "limited")

    def __init__(self, *, no_endpoint: bool = True, rate: float = RATE, burst: int = BURST) -> None:
        self.no_endpoint = no_endpoint
        self._bucket = TokenBucket(rate, burst)
        self.sent = 0
        self.limited = 0  # eligible, but over the rate

    def reply(self, packet: bytes, now: float) -> bytes | None:
        message = host_unreachable(packet)
        if message is None:
            return None
        if not self._bucket.take(now):
            self.limited += 1
            return None
        self.sent += 1
        return message


# --- too big (issue 25) ---------------------------------------------------------


def _dont_fragment(packet: bytes) -> bool:
    return bool(packet[6] & 0x40)


def frag_needed(packet: bytes, mtu: int) -> bytes | None:
    """ICMP "fragmentation needed" (RFC 1191 §4) for an IPv4 packet with DF, next-hop ``mtu``."""
    packet = bytes(packet)
    if len(packet) < 20 or packet[0] >> 4 != 4 or not _dont_fragment(packet):
        return None
    return _ipv4(packet, packet[16:20], ICMP_FRAG_NEEDED, min(mtu, 0xFFFF))


def packet_too_big(packet: bytes, mtu: int) -> bytes | None:
    """ICMPv6 "packet too big" (RFC 4443 §3.2) for an IPv6 packet; ``mtu`` at least 1280."""
    packet = bytes(packet)
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    return _ipv6(packet, packet[24:40], (ICMPV6_PKT_TOOBIG, 0), max(mtu, IPV6_MIN_MTU))


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes]:
    """An IPv4 packet without DF cut into fragments of at most ``mtu`` bytes (RFC 791 §3.2:
    offsets in 8-byte units, MF on all but the last, the identification kept). The first fragment
    keeps the options; later ones carry none (a simplification: options with the copy flag, RFC
    791 §3.1, are rare in tunnelled traffic). [] if it cannot be cut (DF, malformed, or ``mtu``
    too small for the header and 8 bytes)."""
    packet = bytes(packet)
    if len(packet) < 20 or packet[0] >> 4 != 4 or _dont_fragment(packet):
        return []
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if ihl < 20 or total > len(packet) or total <= ihl:
        return []
    packet = packet[:total]
    if total <= mtu:
        return [packet]
    flags_offset = struct.unpack_from("!H", packet, 6)[0]
    base, more = flags_offset & 0x1FFF, flags_offset & 0x2000
    data = packet[ihl:]
    header = packet[:ihl]
    out = []
    off = 0
    while off < len(data):
        hdr = header if not out else header[:20]
        room = (mtu - len(hdr)) & ~7
        if room <= 0:
            return []
        piece = data[off:off + room]
        last = off + len(piece) >= len(data)
        fo = (base + off // 8) | (0 if last and not more else 0x2000)
        h = bytearray(hdr)
        h[0] = 0x40 | (len(hdr) // 4)
        struct.pack_into("!HHH", h, 2, len(hdr) + len(piece), struct.unpack_from("!H", packet, 4)[0], fo)
        h[10:12] = b"\0\0"
        h[10:12] = checksum(bytes(h)).to_bytes(2, "big")
        out.append(bytes(h) + piece)
        off += len(piece)
    return out


class TooBig:
    """Packets over a peer's path limit: ``handle(packet, limit, now)`` returns (the packets to
    send instead: fragments of an IPv4 packet without DF, else none; the ICMP message for TUN or
    None). Counted: ``sent`` (ICMP messages), ``limited`` (over the rate), ``fragmented``."""

    __slots__ = ("_bucket", "sent", "limited", "fragmented")

    def __init__(self, *, rate: float = RATE, burst: int = BURST) -> None:
        self._bucket = TokenBucket(rate, burst)
        self.sent = self.limited = self.fragmented = 0

    def handle(self, packet: bytes, limit: int, now: float) -> tuple[list[bytes], bytes | None]:
        version = packet[0] >> 4 if packet else 0
        if version == 4 and len(packet) >= 20 and not _dont_fragment(packet):
            pieces = fragment_ipv4(packet, limit)
            if pieces:
                self.fragmented += 1
            return pieces, None
        message = frag_needed(packet, limit) if version == 4 else packet_too_big(packet, limit)
        if message is None:
            return [], None
        if not self._bucket.take(now):
            self.limited += 1
            return [], None
        self.sent += 1
        return [], message
