"""Software GRO: merged super-packets must be what a TSO sender would have made."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgdisco.proto import gro

SRC4, DST4 = ipaddress.IPv4Address("10.9.0.1").packed, ipaddress.IPv4Address("10.9.0.2").packed
SRC6, DST6 = ipaddress.IPv6Address("fd00:9::1").packed, ipaddress.IPv6Address("fd00:9::2").packed
TS_OPTION = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)  # NOP NOP timestamps


def ones_sum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    return gro._fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    zeroed = segment[:16] + b"\0\0" + segment[18:]
    return ~gro._fold(gro.pseudo_header_sum(src, dst, len(segment)) + ones_sum(zeroed)) & 0xFFFF


def tcp_packet(seq: int, payload: bytes, *, v6: bool = False, flags: int = gro.TCP_FLAG_ACK,
               options: bytes = TS_OPTION, ack: int = 77, ident: int = 1, sport: int = 40000) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, (5 + len(options) // 4) << 4, flags, 502, 0, 0) + options
    segment = tcp + payload
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    csum = tcp_checksum(src, dst, segment)
    segment = segment[:16] + csum.to_bytes(2, "big") + segment[18:]
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(segment), 6, 64) + src + dst + segment
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), ident, 0x4000, 64, 6, 0, src, dst)
    header = header[:10] + gro.ipv4_header_checksum(header).to_bytes(2, "big") + header[12:]
    return header + segment


def flow(n: int, size: int, *, v6: bool = False, last: int | None = None, seq0: int = 1000) -> list[bytes]:
    r = random.Random(n * 7 + size)
    out, seq = [], seq0
    for i in range(n):
        length = last if (last is not None and i == n - 1) else size
        out.append(tcp_packet(seq & 0xFFFFFFFF, r.randbytes(length), v6=v6, ident=i + 1))
        seq += length
    return out


def kernel_view(vnet: bytes, packet: bytes) -> tuple[int, int, bytes]:
    """What the kernel does with NEEDS_CSUM: complete the checksum; returns (gso_type, gso_size, payload)."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", vnet)
    assert flags == gro.VIRTIO_NET_HDR_F_NEEDS_CSUM
    segment = packet[csum_start:]
    completed = ~ones_sum(segment) & 0xFFFF
    v6 = gso_type == gro.VIRTIO_NET_HDR_GSO_TCPV6
    src, dst = (packet[8:24], packet[24:40]) if v6 else (packet[12:16], packet[16:20])
    assert completed == tcp_checksum(src, dst, segment), "partial checksum does not complete correctly"
    assert csum_offset == 16 and hdr_len == csum_start + (packet[csum_start + 12] >> 4) * 4
    if not v6:
        assert gro.ipv4_header_checksum(packet[:10] + b"\0\0" + packet[12:20]) == int.from_bytes(packet[10:12], "big")
        assert int.from_bytes(packet[2:4], "big") == len(packet)
    else:
        assert int.from_bytes(packet[4:6], "big") == len(packet) - 40
    return gso_type, gso_size, packet[hdr_len:]


@pytest.mark.parametrize("v6", [False, True])
def test_a_run_merges_into_one_super_packet(v6: bool) -> None:
    packets = flow(10, 1368, v6=v6, last=500)
    out = gro.coalesce(packets)
    assert len(out) == 1
    gso_type, gso_size, payload = kernel_view(*out[0])
    assert gso_type == (gro.VIRTIO_NET_HDR_GSO_TCPV6 if v6 else gro.VIRTIO_NET_HDR_GSO_TCPV4)
    assert gso_size == 1368
    hdr = 40 if v6 else 20
    assert payload == b"".join(p[hdr + 32:] for p in packets)


def test_limit_of_64k_starts_a_new_run() -> None:
    out = gro.coalesce(flow(60, 1368))
    sizes = [len(p) for _, p in out]
    assert len(out) == 2 and max(sizes) <= 65535 and sum(s - 52 for s in sizes) == 60 * 1368


@pytest.mark.parametrize(
    "mutate",
    [
        lambda ps: ps[:2] + ps[3:],  # a gap in sequence numbers
        lambda ps: ps[:2] + [tcp_packet(1000 + 2 * 1368, b"x" * 1368, flags=gro.TCP_FLAG_ACK | gro.TCP_FLAG_FIN)] ,
        lambda ps: ps[:2] + [tcp_packet(1000 + 2 * 1368, b"x" * 1368, ack=78)],
        lambda ps: ps[:2] + [tcp_packet(1000 + 2 * 1368, b"x" * 1368, options=b"\x01\x01\x08\x0a" + bytes(8))],
        lambda ps: ps[:2] + [tcp_packet(1000 + 2 * 1368, b"x" * 1368, sport=40001)],
    ],
)
def test_what_must_not_merge(mutate) -> None:
    packets = mutate(flow(4, 1368))
    out = gro.coalesce(packets)
    assert len(out) == 2
    assert out[1] == (gro.ZERO_VNET_HDR, packets[2])  # left alone, bytes unchanged


def test_shorter_segment_ends_a_run_and_psh_only_last() -> None:
    packets = flow(3, 1368, last=100) + flow(2, 1368, seq0=1000 + 2 * 1368 + 100)
    out = gro.coalesce(packets)
    assert [kernel_view(*o)[1] if o[0] != gro.ZERO_VNET_HDR else 0 for o in out] == [1368, 1368]
    psh = tcp_packet(1000, b"a" * 1368, flags=gro.TCP_FLAG_ACK | gro.TCP_FLAG_PSH)
    after = tcp_packet(1000 + 1368, b"b" * 1368)
    assert len(gro.coalesce([psh, after])) == 2


def test_pure_acks_udp_icmp_and_junk_pass_through_unchanged() -> None:
    ack = tcp_packet(5, b"")
    udp = bytes([0x45, 0, 0, 28]) + bytes(5) + bytes([17]) + bytes(18)
    junk = b"\x60" + bytes(10)
    out = gro.coalesce([ack, udp, junk, ack])
    assert out == [(gro.ZERO_VNET_HDR, p) for p in (ack, udp, junk, ack)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 1400), st.booleans()), max_size=40))
def test_no_byte_lost_reordered_or_invented(spec) -> None:
    """Random interleavings of flows: per flow, the stream of payload bytes is exactly preserved."""
    seqs = {0: 0, 1: 0, 2: 0, 3: 0}
    packets = []
    r = random.Random(len(spec))
    for flow_id, size, v6 in spec:
        packets.append(tcp_packet(seqs[flow_id], r.randbytes(size), v6=v6 and flow_id % 2 == 1,
                                  sport=40000 + flow_id))
        seqs[flow_id] += size

    def streams(items: list[tuple[bytes, bytes]]) -> dict:
        got: dict = {}
        for vnet, p in items:
            v6 = p[0] >> 4 == 6
            ip = 40 if v6 else 20
            if vnet != gro.ZERO_VNET_HDR:
                kernel_view(vnet, p)
            sport = int.from_bytes(p[ip:ip + 2], "big")
            hdr = ip + (p[ip + 12] >> 4) * 4
            got.setdefault((sport, v6), []).append(p[hdr:])
        return {k: b"".join(v) for k, v in got.items()}

    assert streams(gro.coalesce(packets)) == streams([(gro.ZERO_VNET_HDR, p) for p in packets])
