"""Demultiplexing the one UDP socket by a datagram's first bytes (ARCHITECTURE.md, "The one socket").

- WireGuard: byte 0 in 1..4 and bytes 1..3 zero (whitepaper §5.4: a little-endian
  u32 type with three reserved zero bytes).
- STUN: the two top bits of byte 0 are zero and bytes 4..8 hold the magic cookie
  0x2112A442 (RFC 5389 §6). Binding messages (types 0x0001, 0x0101, 0x0111)
  start with byte 0 = 0 or byte 1 != 0, so they never look like WireGuard;
  WireGuard is tested first because it is the hot path.
- Path probe (probe.py): byte 0 is 0xF1 (request) or 0xF2 (response), bytes 1..2 the magic
  "wd". Byte 0 has its top two bits set, so it is never STUN, and is not 1..4, so it is never
  WireGuard. The version (byte 3) is checked by the prober, which counts what it drops.
- Anything else is dropped and counted by the caller.
"""

from __future__ import annotations

from wgdisco.proto.probe import MAGIC as PROBE_MAGIC
from wgdisco.proto.probe import REQUEST_TYPE as PROBE_REQUEST_TYPE
from wgdisco.proto.probe import RESPONSE_TYPE as PROBE_RESPONSE_TYPE

WIREGUARD = 1
STUN = 2
PROBE = 3
OTHER = 0

STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
_PROBE_TYPES = (PROBE_REQUEST_TYPE, PROBE_RESPONSE_TYPE)


def classify(data: bytes) -> int:
    if len(data) >= 4 and 1 <= data[0] <= 4 and not (data[1] | data[2] | data[3]):
        return WIREGUARD
    if len(data) >= 20 and data[0] & 0xC0 == 0 and data[4:8] == STUN_MAGIC_COOKIE:
        return STUN
    if len(data) >= 3 and data[0] in _PROBE_TYPES and data[1:3] == PROBE_MAGIC:
        return PROBE
    return OTHER
