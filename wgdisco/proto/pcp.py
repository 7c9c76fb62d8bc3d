"""PCP messages (RFC 6887), sans I/O: the MAP and ANNOUNCE requests a client sends, and the
responses it reads.

- Request header (§7.1, 24 bytes): version 2, R=0 and the opcode, reserved, requested
  lifetime, the client's IP address (IPv4 as an IPv4-mapped IPv6 address, §5).
- MAP opcode data (§11.1, 36 bytes): a 96-bit mapping nonce, protocol (17: UDP), reserved,
  internal port, suggested external port, suggested external address (``::ffff:0.0.0.0``:
  no preference). Lifetime 0 deletes the mapping (§15).
- Response header (§7.2, 24 bytes): version, R=1 and the opcode, reserved, result code,
  lifetime, epoch time (§8.5), 96 reserved bits; MAP data as in the request, with the
  assigned external port and address. Options may follow; they are skipped.
- ANNOUNCE (§14.1): the header alone, lifetime 0; ``wgdisco netcheck`` uses it to ask whether
  a PCP server is there without creating anything.

``parse_response`` raises DecodeError for anything malformed (§7.2: a response shorter than
24 bytes, longer than 1100, not a multiple of 4, not version 2, without the R bit, or a MAP
response without its 36 bytes); result codes are returned, not raised.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..errors import DecodeError, LocalError

PORT = 5351  # §19.1
VERSION = 2
OP_ANNOUNCE = 0
OP_MAP = 1
RESPONSE_BIT = 0x80
PROTO_UDP = 17
NONCE_LEN = 12
HEADER_LEN = 24
MAP_LEN = 36
MAX_MESSAGE = 1100  # §7
# §7.4 result codes
SUCCESS, UNSUPP_VERSION = 0, 1
RESULT_NAMES = {
    0: "success", 1: "unsupp-version", 2: "not-authorized", 3: "malformed-request", 4: "unsupp-opcode",
    5: "unsupp-option", 6: "malformed-option", 7: "network-failure", 8: "no-resources",
    9: "unsupp-protocol", 10: "user-ex-quota", 11: "cannot-provide-external", 12: "address-mismatch",
    13: "excessive-remote-peers",
}
# §7.4: errors that say "try again later" (short lifetime) vs those that will not change
TRANSIENT_RESULTS = {7, 8, 10, 11, 13}
_ANY_V4 = ipaddress.IPv6Address("::ffff:0.0.0.0")


@dataclass(frozen=True)
class Response:
    opcode: int
    result: int
    lifetime: int
    epoch: int
    nonce: bytes = b""  # MAP only
    protocol: int = 0
    internal_port: int = 0
    external_port: int = 0
    external_address: str = ""  # IPv4 dotted when IPv4-mapped, else IPv6


def _address16(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{addr}").packed
    return addr.packed


def _show(packed: bytes) -> str:
    addr = ipaddress.IPv6Address(packed)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def _header(opcode: int, lifetime: int, client_ip: str) -> bytes:
    if not 0 <= lifetime < 2**32:
        raise LocalError(f"PCP lifetime {lifetime} out of range")
    return struct.pack("!BBHI", VERSION, opcode, 0, lifetime) + _address16(client_ip)


def map_request(nonce: bytes, client_ip: str, internal_port: int, external_port: int, lifetime: int) -> bytes:
    """§11.1: MAP UDP ``internal_port`` of ``client_ip`` (the request's source address),
    suggesting ``external_port``; lifetime 0 deletes."""
    if len(nonce) != NONCE_LEN:
        raise LocalError(f"PCP nonce must be {NONCE_LEN} bytes")
    if not 1 <= internal_port <= 65535 or not 0 <= external_port <= 65535:
        raise LocalError(f"PCP ports out of range: {internal_port} {external_port}")
    body = nonce + struct.pack("!B3xHH", PROTO_UDP, internal_port, external_port) + _ANY_V4.packed
    return _header(OP_MAP, lifetime, client_ip) + body


def announce_request(client_ip: str) -> bytes:
    """§14.1: ANNOUNCE, the header alone with lifetime 0."""
    return _header(OP_ANNOUNCE, 0, client_ip)


def parse_response(data: bytes) -> Response:
    n = len(data)
    if n < HEADER_LEN or n > MAX_MESSAGE or n % 4:
        raise DecodeError(f"PCP response of {n} bytes")
    version, op, result, lifetime, epoch = struct.unpack_from("!BBxBII", data)
    if version != VERSION:
        raise DecodeError(f"PCP version {version}")
    if not op & RESPONSE_BIT:
        raise DecodeError("PCP request, not a response")
    opcode = op & 0x7F
    if opcode != OP_MAP:
        return Response(opcode, result, lifetime, epoch)
    if n < HEADER_LEN + MAP_LEN:
        if result != SUCCESS:  # §7.2: an error response may carry the opcode data or not
            return Response(opcode, result, lifetime, epoch)
        raise DecodeError(f"PCP MAP response of {n} bytes")
    o = HEADER_LEN
    nonce = data[o:o + NONCE_LEN]
    protocol, internal, external = struct.unpack_from("!B3xHH", data, o + NONCE_LEN)
    address = _show(data[o + 20:o + 36])
    return Response(opcode, result, lifetime, epoch, nonce, protocol, internal, external, address)
