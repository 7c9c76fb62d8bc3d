"""Receive-side TCP coalescing for a TUN with IFF_VNET_HDR (software GRO).

Theory of operation
-------------------
The kernel's TCP stack spends most of its receive work per packet. When a run
of decrypted packets holds consecutive segments of one TCP flow, we hand them
to the TUN device as one GSO "super-packet": the first packet's headers with
lengths fixed up, all payloads concatenated, and a virtio-net header saying
"TCP GSO, segment size N, checksum partial". The kernel takes it as if a NIC
had coalesced it (virtio_net_hdr_to_skb), so one write and one pass through
the stack replace up to ~45, and the receiver sends fewer ACKs.

No payload checksum is computed here: the TCP checksum field is set to the
pseudo-header sum and the header says NEEDS_CSUM (CHECKSUM_PARTIAL), which the
kernel trusts, as with a local sender. Segments are only merged when the
result is exactly what the sender would have produced with TSO, following
wireguard-go tun/offload_linux.go (tcpPacketsCanCoalesce): same addresses,
ports, ACK number, TCP options (timestamps included) and IP fields; only the
ACK flag (PSH allowed on the last one); consecutive sequence numbers; equal
payload sizes except a shorter last one; at most 64 KiB.
"""

from __future__ import annotations

import struct

VIRTIO_NET_HDR_LEN = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
ZERO_VNET_HDR = bytes(VIRTIO_NET_HDR_LEN)
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset

MAX_SUPER_PACKET = 65535
TCP_FLAG_FIN, TCP_FLAG_SYN, TCP_FLAG_RST, TCP_FLAG_PSH, TCP_FLAG_ACK, TCP_FLAG_URG = 1, 2, 4, 8, 16, 32
_PROTO_TCP = 6


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4_header_checksum(header: bytes) -> int:
    """RFC 791 header checksum of a header whose checksum field is zero."""
    return ~_fold(sum(struct.unpack(f"!{len(header) // 2}H", header))) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, length: int) -> int:
    """Folded, uncomplemented TCP pseudo-header sum (RFC 793 §3.1, RFC 8200 §8.1): CHECKSUM_PARTIAL."""
    words = struct.unpack(f"!{(len(src) + len(dst)) // 2}H", src + dst)
    return _fold(sum(words) + _PROTO_TCP + (length >> 16) + (length & 0xFFFF))


class _Segment:
    """Parsed view of one TCP packet that may be merged. None from parse() otherwise."""

    __slots__ = ("packet", "v6", "ip_len", "hdr_len", "flow", "seq", "payload_len", "flags", "header_key")

    @staticmethod
    def parse(packet: bytes) -> "_Segment | None":
        n = len(packet)
        version = packet[0] >> 4
        if version == 4:
            if n < 40 or packet[0] != 0x45 or packet[9] != _PROTO_TCP:
                return None  # options in the IP header, or not TCP
            if packet[6] & 0x3F or packet[7]:  # MF set or a fragment offset
                return None
            ip_len = 20
            total = (packet[2] << 8) | packet[3]
            # TOS, DF, TTL, addresses must match for merging
            ip_key = packet[1:2] + packet[6:7] + packet[8:10] + packet[12:20]
        elif version == 6:
            if n < 60 or packet[6] != _PROTO_TCP:
                return None  # extension headers, or not TCP
            ip_len = 40
            total = 40 + ((packet[4] << 8) | packet[5])
            ip_key = packet[0:4] + packet[7:8] + packet[8:40]  # traffic class, flow label, hop limit, addresses
        else:
            return None
        if total != n:
            return None
        tcp_len = (packet[ip_len + 12] >> 4) * 4
        hdr_len = ip_len + tcp_len
        if tcp_len < 20 or hdr_len > n:
            return None
        flags = packet[ip_len + 13]
        if flags & ~(TCP_FLAG_ACK | TCP_FLAG_PSH) or not flags & TCP_FLAG_ACK:
            return None
        payload_len = n - hdr_len
        if payload_len == 0:
            return None  # pure ACKs are never merged
        seg = _Segment()
        seg.packet = packet
        seg.v6 = version == 6
        seg.ip_len = ip_len
        seg.hdr_len = hdr_len
        # ports, ACK number, window, urgent pointer and options must all match
        seg.header_key = ip_key + packet[ip_len:ip_len + 4] + packet[ip_len + 8:ip_len + 12] \
            + packet[ip_len + 14:ip_len + 16] + packet[ip_len + 18:hdr_len]
        seg.seq = int.from_bytes(packet[ip_len + 4:ip_len + 8], "big")
        seg.payload_len = payload_len
        seg.flags = flags
        return seg


def _follows(prev: _Segment, seg: _Segment, size: int, total: int) -> bool:
    return (
        seg.header_key == prev.header_key
        and seg.seq == (prev.seq + prev.payload_len) & 0xFFFFFFFF
        and prev.payload_len == size  # only the last may be shorter
        and seg.payload_len <= size
        and not prev.flags & TCP_FLAG_PSH  # PSH only on the last
        and total + seg.payload_len <= MAX_SUPER_PACKET
    )


def _merge(run: list[_Segment]) -> tuple[bytes, bytes]:
    first = run[0]
    p = first.packet
    ip_len, hdr_len = first.ip_len, first.hdr_len
    payload = b"".join([s.packet[s.hdr_len:] for s in run])
    total = hdr_len + len(payload)
    header = bytearray(p[:hdr_len])
    header[ip_len + 13] = run[-1].flags  # PSH of the last one, if any
    tcp_length = total - ip_len
    if first.v6:
        header[4:6] = (total - 40).to_bytes(2, "big")
        partial = pseudo_header_sum(p[8:24], p[24:40], tcp_length)
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    else:
        header[2:4] = total.to_bytes(2, "big")
        header[10:12] = b"\0\0"
        header[10:12] = ipv4_header_checksum(bytes(header[:20])).to_bytes(2, "big")
        partial = pseudo_header_sum(p[12:16], p[16:20], tcp_length)
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    header[ip_len + 16:ip_len + 18] = partial.to_bytes(2, "big")
    vnet = _VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len, first.payload_len, ip_len, 16)
    return vnet, bytes(header) + payload


def coalesce(packets: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(virtio-net header, packet) pairs to write, in the original order.

    Packets that cannot be merged go out unchanged with a zero header. Only
    adjacent packets are merged, so order within every flow is kept.
    """
    out: list[tuple[bytes, bytes]] = []
    run: list[_Segment] = []
    size = total = 0

    def flush() -> None:
        if len(run) == 1:
            out.append((ZERO_VNET_HDR, run[0].packet))
        elif run:
            out.append(_merge(run))
        run.clear()

    for packet in packets:
        seg = _Segment.parse(packet)
        if seg is None:
            flush()
            out.append((ZERO_VNET_HDR, packet))
            continue
        if run and _follows(run[-1], seg, size, total):
            run.append(seg)
            total += seg.payload_len
            continue
        flush()
        run.append(seg)
        size = seg.payload_len
        total = seg.hdr_len + seg.payload_len
    flush()
    return out
