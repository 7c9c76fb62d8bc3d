"""NAT-PMP messages (RFC 6886), sans I/O: build requests, parse responses.

Only what a client that maps one UDP port needs:

- external address request (§3.2): version 0, opcode 0; response opcode 128: result code,
  seconds since the gateway's epoch, the external IPv4 address (12 bytes);
- UDP mapping request (§3.3): version 0, opcode 1, reserved, internal port, suggested external
  port, requested lifetime (12 bytes); response opcode 129: result code, epoch, internal port,
  mapped external port, lifetime (16 bytes). Lifetime 0 with external port 0 deletes (§3.4).

All integers are big-endian. ``parse_response`` raises DecodeError for anything that is not
a well-formed version-0 response of the right size (§3.5: responses of another size are
ignored); a non-zero result code is returned, not raised: the caller decides.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..errors import DecodeError, LocalError

PORT = 5351  # the gateway listens here (§1.1, §3)
VERSION = 0
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
RESPONSE_BIT = 128
RECOMMENDED_LIFETIME = 7200  # §3.3: two hours
# §3.5 result codes
SUCCESS, UNSUPPORTED_VERSION, NOT_AUTHORIZED, NETWORK_FAILURE, OUT_OF_RESOURCES, UNSUPPORTED_OPCODE = range(6)
RESULT_NAMES = {
    0: "success", 1: "unsupported-version", 2: "not-authorized", 3: "network-failure",
    4: "out-of-resources", 5: "unsupported-opcode",
}


@dataclass(frozen=True)
class ExternalAddressResponse:
    result: int
    epoch: int  # seconds since the gateway's port-mapping table was initialised (§3.6)
    address: str  # dotted IPv4


@dataclass(frozen=True)
class MapResponse:
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


Response = ExternalAddressResponse | MapResponse


def external_address_request() -> bytes:
    """§3.2: two bytes."""
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def map_request(internal_port: int, external_port: int, lifetime: int) -> bytes:
    """§3.3: map UDP ``internal_port`` (suggesting ``external_port``) for ``lifetime`` seconds;
    lifetime 0 and external port 0 delete the mapping (§3.4)."""
    if not 1 <= internal_port <= 65535 or not 0 <= external_port <= 65535 or not 0 <= lifetime < 2**32:
        raise LocalError(f"NAT-PMP map request out of range: {internal_port} {external_port} {lifetime}")
    return struct.pack("!BBHHHI", VERSION, OP_MAP_UDP, 0, internal_port, external_port, lifetime)


def parse_response(data: bytes) -> Response:
    """A version-0 response (opcode 128 or 129) of exactly the right size; DecodeError otherwise."""
    if len(data) < 4:
        raise DecodeError(f"NAT-PMP response of {len(data)} bytes")
    version, op, result = struct.unpack_from("!BBH", data)
    if version != VERSION:
        raise DecodeError(f"NAT-PMP version {version}")
    if op == RESPONSE_BIT | OP_EXTERNAL_ADDRESS:
        if len(data) != 12:
            raise DecodeError(f"NAT-PMP external address response of {len(data)} bytes (want 12)")
        (epoch,) = struct.unpack_from("!I", data, 4)
        return ExternalAddressResponse(result, epoch, str(ipaddress.IPv4Address(data[8:12])))
    if op == RESPONSE_BIT | OP_MAP_UDP:
        if len(data) != 16:
            raise DecodeError(f"NAT-PMP map response of {len(data)} bytes (want 16)")
        epoch, internal, external, lifetime = struct.unpack_from("!IHHI", data, 4)
        return MapResponse(result, epoch, internal, external, lifetime)
    raise DecodeError(f"NAT-PMP opcode {op}")


def unsupported_version_answer(data: bytes) -> bool:
    """A NAT-PMP gateway's answer to a PCP request (RFC 6887 §9): version 0, result 1
    (unsupported version). At least 4 bytes; the rest is not looked at."""
    return len(data) >= 4 and data[0] == VERSION and data[1] & RESPONSE_BIT != 0 and \
        struct.unpack_from("!H", data, 2)[0] == UNSUPPORTED_VERSION
