"""wgdisco.proto.icmp: ICMP host / address unreachable for packets the tunnel cannot send.

Checksums are checked against RFC 1071's own example and against a second implementation of
the sum written another way (a big-integer sum modulo 0xFFFF); the real kernel accepting the
messages is the lab test's part (test_wg_compat_lab.py, "Destination Host Unreachable").
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgdisco.proto import icmp
from wgdisco.proto.icmp import Unreachable, checksum, host_unreachable


def reference_sum(data: bytes) -> int:
    """The ones' complement sum another way: 16-bit words summed modulo 0xFFFF (RFC 1071 §2 (B),
    the sum is independent of byte grouping; 0 and 0xFFFF are the same number)."""
    if len(data) & 1:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)) % 0xFFFF
    return total or 0xFFFF if any(data) else 0


def verifies(data: bytes) -> bool:
    """A message with its checksum in place sums to 0xFFFF (its complement is zero)."""
    return reference_sum(data) == 0xFFFF


def ipv4(src: str, dst: str, proto: int = 17, payload: bytes = b"x" * 32, frag: int = 0, tos: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), 7, frag, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + payload


def ipv6(src: str, dst: str, nxt: int = 17, payload: bytes = b"y" * 32) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nxt, 64, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def echo(kind: int = 8) -> bytes:
    body = struct.pack("!BBHHH", kind, 0, 0, 1, 1) + b"ping"
    return body


# --- the checksum ----------------------------------------------------------------------


def test_rfc_1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (end-around carries included)
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2 & 0xFFFF)


@given(st.binary(min_size=0, max_size=300))
def test_checksum_matches_the_reference(data: bytes) -> None:
    assert (~checksum(data) & 0xFFFF) % 0xFFFF == reference_sum(data) % 0xFFFF


# --- IPv4: type 3 code 1 -------------------------------------------------------------------


def test_ipv4_host_unreachable_layout_and_checksums() -> None:
    original = ipv4("10.9.0.1", "10.77.0.5", proto=1, payload=echo(8) + b"z" * 56, tos=0x10)
    msg = host_unreachable(original)
    assert msg is not None
    assert msg[0] == 0x45 and msg[9] == 1 and msg[8] == icmp.HOP_LIMIT
    assert msg[1] == 0xD0  # IPTOS_PREC_INTERNETCONTROL | the original's TOS bits
    assert struct.unpack("!H", msg[2:4])[0] == len(msg)
    assert msg[12:16] == original[16:20]  # from the unreachable destination (see the docstring)
    assert msg[16:20] == original[12:16]  # to the sender
    assert verifies(msg[:20])  # the header checksum
    assert msg[20:22] == bytes([3, 1]) and msg[24:28] == bytes(4)
    assert verifies(msg[20:])  # the ICMP checksum
    assert msg[28:] == original  # short enough to be quoted whole


def test_ipv4_quotes_at_most_576_bytes_in_all() -> None:
    original = ipv4("10.9.0.1", "10.77.0.5", payload=bytes(range(256)) * 6)
    msg = host_unreachable(original)
    assert msg is not None and len(msg) == icmp.V4_MAX
    assert msg[28:] == original[:icmp.V4_MAX - 28]
    assert verifies(msg[20:])


@pytest.mark.parametrize(("packet", "why"), [
    (ipv4("10.9.0.1", "10.77.0.5", proto=1, payload=bytes([3, 1, 0, 0]) + bytes(4) + bytes(28)), "an ICMP error"),
    (ipv4("10.9.0.1", "10.77.0.5", proto=1, payload=bytes([11, 0, 0, 0]) + bytes(4)), "time exceeded"),
    (ipv4("10.9.0.1", "10.77.0.5", proto=1, payload=b""), "an ICMP message cut before its type"),
    (ipv4("10.9.0.1", "224.0.0.251"), "to multicast"),
    (ipv4("10.9.0.1", "255.255.255.255"), "to broadcast"),
    (ipv4("0.0.0.0", "10.77.0.5"), "from no host"),
    (ipv4("224.1.2.3", "10.77.0.5"), "from multicast"),
    (ipv4("127.0.0.1", "10.77.0.5"), "from loopback"),
    (ipv4("10.9.0.1", "10.77.0.5", frag=0x2000 | 185), "a later fragment"),
    (ipv4("10.9.0.1", "10.77.0.5")[:19], "truncated header"),
    (bytes([0x46]) + ipv4("10.9.0.1", "10.77.0.5")[1:20], "options past the end"),
    (b"", "empty"),
    (b"\x50" + bytes(40), "IP version 5"),
])
def test_ipv4_never_answered(packet: bytes, why: str) -> None:
    assert host_unreachable(packet) is None, why


def test_ipv4_echo_request_and_first_fragment_are_answered() -> None:
    assert host_unreachable(ipv4("10.9.0.1", "10.77.0.5", proto=1, payload=echo(8))) is not None
    assert host_unreachable(ipv4("10.9.0.1", "10.77.0.5", frag=0x2000)) is not None  # MF, offset 0


# --- IPv6: type 1 code 3 -------------------------------------------------------------------


def pseudo(src: bytes, dst: bytes, body: bytes) -> bytes:
    return src + dst + struct.pack("!I3xB", len(body), 58)


def test_ipv6_address_unreachable_layout_and_checksum_with_pseudo_header() -> None:
    original = ipv6("fd00:9::1", "fd00:77::5", nxt=58, payload=echo(128))
    msg = host_unreachable(original)
    assert msg is not None
    assert msg[0] >> 4 == 6 and msg[6] == 58 and msg[7] == icmp.HOP_LIMIT
    assert struct.unpack("!H", msg[4:6])[0] == len(msg) - 40
    assert msg[8:24] == original[24:40] and msg[24:40] == original[8:24]
    body = msg[40:]
    assert body[:2] == bytes([1, 3]) and body[4:8] == bytes(4) and body[8:] == original
    assert verifies(pseudo(msg[8:24], msg[24:40], body) + body)
    assert not verifies(body)  # without the pseudo-header it would not check (RFC 8200 §8.1)


def test_ipv6_quotes_at_most_1280_bytes_in_all() -> None:
    original = ipv6("fd00:9::1", "fd00:77::5", payload=bytes(range(256)) * 8)
    msg = host_unreachable(original)
    assert msg is not None and len(msg) == icmp.V6_MAX
    assert verifies(pseudo(msg[8:24], msg[24:40], msg[40:]) + msg[40:])


def hop_by_hop(nxt: int, inner: bytes) -> bytes:
    return bytes([nxt, 0]) + bytes(6) + inner  # 8 bytes, PadN left as zeros


@pytest.mark.parametrize(("packet", "why"), [
    (ipv6("fd00:9::1", "fd00:77::5", nxt=58, payload=bytes([1, 3, 0, 0]) + bytes(4)), "an ICMPv6 error"),
    (ipv6("fd00:9::1", "fd00:77::5", nxt=58, payload=bytes([137, 0, 0, 0]) + bytes(4)), "a redirect"),
    (ipv6("fd00:9::1", "fd00:77::5", nxt=0, payload=hop_by_hop(58, bytes([3, 0, 0, 0]) + bytes(4))),
     "an error behind a hop-by-hop header"),
    (ipv6("fd00:9::1", "ff02::1"), "to multicast"),
    (ipv6("::", "fd00:77::5"), "from the unspecified address"),
    (ipv6("ff02::2", "fd00:77::5"), "from multicast"),
    (ipv6("fd00:9::1", "fd00:77::5", nxt=44, payload=bytes([58, 0, 0, 8]) + bytes(4) + bytes(8)),
     "an ICMPv6 message in a later fragment"),
    (ipv6("fd00:9::1", "fd00:77::5", nxt=0, payload=b"\x3a"), "a truncated extension header"),
    (ipv6("fd00:9::1", "fd00:77::5")[:39], "truncated header"),
])
def test_ipv6_never_answered(packet: bytes, why: str) -> None:
    assert host_unreachable(packet) is None, why


def test_ipv6_echo_behind_extension_headers_is_answered() -> None:
    assert host_unreachable(ipv6("fd00:9::1", "fd00:77::5", nxt=0, payload=hop_by_hop(58, echo(128)))) is not None
    assert host_unreachable(ipv6("fd00:9::1", "fd00:77::5", nxt=44,  # a later fragment of UDP
                                 payload=bytes([17, 0, 0, 8]) + bytes(4) + bytes(8))) is not None


# --- the rate limit -----------------------------------------------------------------------------


def test_rate_limited_like_the_kernel_global_icmp_limit() -> None:
    u = Unreachable()
    packet = ipv4("10.9.0.1", "10.77.0.5")
    answered = [u.reply(packet, 100.0) is not None for _ in range(80)]
    assert answered.count(True) == icmp.BURST and u.limited == 80 - icmp.BURST
    assert u.reply(packet, 100.0005) is None  # half a token
    assert u.reply(packet, 100.001) is not None  # 1,000 a second
    assert u.reply(ipv4("10.9.0.1", "224.0.0.1"), 200.0) is None and u.sent == icmp.BURST + 1  # ineligible: no token


# --- too big (issue 25): frag-needed, packet too big, fragments -----------------------------

DF = 0x4000


def test_ipv4_with_df_gets_fragmentation_needed_with_the_next_hop_mtu() -> None:
    original = ipv4("10.9.0.1", "10.9.0.2", proto=6, payload=b"t" * 1400, frag=DF)
    msg = icmp.frag_needed(original, 1312)
    assert msg is not None
    assert msg[20:22] == bytes([3, 4])  # RFC 1191 §4
    assert struct.unpack("!HH", msg[24:28]) == (0, 1312)  # unused, next-hop MTU
    assert msg[12:16] == original[16:20] and msg[16:20] == original[12:16]
    assert verifies(msg[:20]) and verifies(msg[20:])
    assert msg[28:48] == original[:20]
    assert icmp.frag_needed(ipv4("10.9.0.1", "10.9.0.2", payload=b"t" * 1400), 1312) is None  # no DF


def test_ipv6_gets_packet_too_big_never_below_1280() -> None:
    original = ipv6("fd00:9::1", "fd00:9::2", nxt=6, payload=b"u" * 1400)
    msg = icmp.packet_too_big(original, 1312)
    assert msg is not None
    assert msg[40:42] == bytes([2, 0]) and struct.unpack("!I", msg[44:48])[0] == 1312  # RFC 4443 §3.2
    assert verifies(pseudo(msg[8:24], msg[24:40], msg[40:]) + msg[40:])
    assert len(msg) <= 1280
    low = icmp.packet_too_big(original, 600)
    assert low is not None and struct.unpack("!I", low[44:48])[0] == 1280
    assert icmp.packet_too_big(ipv6("fd00:9::1", "fd00:9::2", nxt=58, payload=bytes([1, 0]) + b"e" * 1400), 1312) is None


@given(st.integers(min_value=21, max_value=4000), st.integers(min_value=68, max_value=1500))
def test_fragments_reassemble_to_the_original(size: int, mtu: int) -> None:
    original = ipv4("10.9.0.1", "10.9.0.2", payload=bytes(i & 0xFF for i in range(size - 20)))
    pieces = icmp.fragment_ipv4(original, mtu)
    assert pieces
    data = bytearray()
    for i, piece in enumerate(pieces):
        assert len(piece) <= mtu and (len(pieces) == 1 or verifies(piece[:20]))
        total, ident, fo = struct.unpack("!HHH", piece[2:8])
        assert total == len(piece) and ident == 7
        assert (fo & 0x1FFF) * 8 == len(data)
        assert bool(fo & 0x2000) == (i < len(pieces) - 1)  # MF on all but the last
        assert i == len(pieces) - 1 or (len(piece) - 20) % 8 == 0
        data += piece[20:]
    assert bytes(data) == original[20:]


def test_too_big_handles_each_kind_and_is_rate_limited() -> None:
    tb = icmp.TooBig(rate=1.0, burst=2)
    v4df = ipv4("10.9.0.1", "10.9.0.2", payload=b"a" * 1400, frag=DF)
    v4 = ipv4("10.9.0.1", "10.9.0.2", payload=b"a" * 1400)
    v6 = ipv6("fd00:9::1", "fd00:9::2", payload=b"b" * 1400)
    pieces, msg = tb.handle(v4, 1312, 0.0)
    assert msg is None and len(pieces) == 2 and tb.fragmented == 1
    assert tb.handle(v4df, 1312, 0.0)[1] is not None
    assert tb.handle(v6, 1312, 0.0)[1] is not None
    assert tb.handle(v6, 1312, 0.0) == ([], None) and tb.limited == 1 and tb.sent == 2
